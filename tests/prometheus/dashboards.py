"""The chart's Grafana dashboards as Grafana would query them: variables resolved from their
own ``label_values`` queries, "All" selected, ``$__rate_interval`` given a value."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.prometheus.server import Prometheus, Sample

DASHBOARDS = Path(__file__).resolve().parents[2] / "charts" / "amfs" / "dashboards"
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\s*\)$")


@dataclass(frozen=True)
class Target:
    dashboard: str  # file name
    panel: str
    ref: str
    expr: str
    legend: str

    @property
    def key(self) -> str:
        return f"{self.panel} #{self.ref}"

    def legend_of(self, labels: dict[str, str]) -> str:
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""),
                      self.legend).strip()


def load(name: str) -> dict[str, Any]:
    return dict(json.loads((DASHBOARDS / name).read_text()))


def targets(name: str) -> Iterator[Target]:
    for panel in load(name)["panels"]:
        for target in panel.get("targets", []):
            yield Target(name, panel["title"], target["refId"], target["expr"],
                         target.get("legendFormat", ""))


def grafana_escape(value: str) -> str:
    """How Grafana's Prometheus data source escapes a multi-value inside a regex matcher:
    regex metacharacters get a backslash, doubled for the PromQL string."""
    return re.sub(r"[\\^$*+?.()|\[\]{}]", lambda m: "\\\\" + m.group(0), value)


def substitute(expr: str, variables: dict[str, str]) -> str:
    # Longest names first: $memory must not eat the start of $memory_namespace.
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(f"${name}", variables[name])
    return expr


def resolve_variables(prometheus: Prometheus, name: str, rate_interval: str
                      ) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Each query variable's "All" value, in dashboard order (later ones use earlier ones),
    and the values each variable's own query returned."""
    variables = {"__rate_interval": rate_interval}
    found: dict[str, list[str]] = {}
    for variable in load(name)["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = _LABEL_VALUES.match(variable["query"]["query"])
        assert match, f"{name}: ${variable['name']} is not a label_values() query"
        selector = substitute(match.group("selector"), variables)
        values = prometheus.label_values(match.group("label"), selector)
        found[variable["name"]] = values
        all_value = variable.get("allValue")
        # Without allValue Grafana's "All" is the alternation of the values found.
        variables[variable["name"]] = all_value if all_value is not None else (
            "(" + "|".join(grafana_escape(v) for v in values) + ")")
    return variables, found


def evaluate(prometheus: Prometheus, target: Target, variables: dict[str, str]
             ) -> dict[str, float]:
    """The target's instant result as legend -> value (what the panel would draw now)."""
    samples: list[Sample] = prometheus.query(substitute(target.expr, variables))
    result: dict[str, float] = {}
    for labels, value in samples:
        legend = target.legend_of(labels)
        assert legend not in result, f"{target.key}: two series with legend {legend!r}"
        result[legend] = value
    return result
