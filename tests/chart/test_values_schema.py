"""values.yaml and values.schema.json: documented, closed, and enforced by Helm."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import helm_python
import jsonschema
import pytest
import yaml

from scripts.render_manifests import CHART
from tests.chart.conftest import ALL_FEATURES

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES_TEXT = (CHART / "values.yaml").read_text()
DEFAULTS = yaml.safe_load(VALUES_TEXT)
# Objects whose content is Kubernetes' (affinity, tolerations) or a parent chart's
# (global): typed as objects, deliberately open.
FREE_FORM = {"/properties/global", "/properties/operator/properties/affinity",
             "/properties/operator/properties/tolerations/items"}


def object_schemas(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if node.get("type") == "object":
            yield path, node
        for key, child in node.items():
            yield from object_schemas(child, f"{path}/{key}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from object_schemas(child, f"{path}/{index}")


def test_every_object_level_is_closed() -> None:
    checked = 0
    for path, schema in object_schemas(SCHEMA):
        if path in FREE_FORM:
            continue
        closed = schema.get("additionalProperties")
        # A fixed shape forbids unknown keys; a map (labels, annotations) types its values.
        assert closed is False or (isinstance(closed, dict) and "properties" not in schema), \
            f"{path or '/'} accepts unknown keys"
        checked += 1
    assert checked > 30


def test_schema_and_values_declare_the_same_keys() -> None:
    def keys(values: Any, schema: dict[str, Any], path: str = "") -> Iterator[str]:
        declared = schema.get("properties", {})
        if not isinstance(values, dict) or not declared:
            return
        for key, value in values.items():
            assert key in declared, f"values.yaml {path}{key} is not in values.schema.json"
            yield f"{path}{key}"
            yield from keys(value, declared[key], f"{path}{key}.")

    in_values = set(keys(DEFAULTS, SCHEMA))

    def declared(schema: dict[str, Any], path: str = "") -> Iterator[str]:
        for key, child in schema.get("properties", {}).items():
            yield f"{path}{key}"
            yield from declared(child, f"{path}{key}.")

    # Optional Kubernetes fields (other resource quantities) need no default.
    missing = {key for key in declared(SCHEMA) if key not in in_values
               and key != "global" and not key.startswith("operator.resources.")}
    assert not missing, f"declared in the schema but absent from values.yaml: {sorted(missing)}"


def test_every_value_is_documented_in_values_yaml() -> None:
    """Each value has a comment right above its key, or above an enclosing key."""
    lines = VALUES_TEXT.splitlines()
    commented: list[int] = []  # indentations of the enclosing keys that have a comment
    undocumented = []
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][\w-]*):(.*)$", line)
        if not match:
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3)
        commented = [i for i in commented if i < indent]
        if number and lines[number - 1].strip().startswith("#"):
            commented.append(indent)
        following = next((ln for ln in lines[number + 1:] if ln.strip()
                          and not ln.strip().startswith("#")), "")
        is_leaf = rest.split("#")[0].strip() != "" or following.strip().startswith("- ")
        if is_leaf and not commented:
            undocumented.append(f"line {number + 1}: {key}")
    assert not undocumented, f"values without a comment: {undocumented}"


def test_schema_describes_every_leaf() -> None:
    def leaves(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
        for key, child in node.get("properties", {}).items():
            if child.get("properties"):
                yield from leaves(child, f"{path}{key}.")
            else:
                yield f"{path}{key}", child

    undescribed = [path for path, node in leaves(SCHEMA) if not node.get("description")]
    # Alert fields share their meaning; their alert object carries the description.
    undescribed = [p for p in undescribed if not re.match(r"metrics\.prometheusRule\.alerts\.",
                                                          p)]
    assert not undescribed


@pytest.mark.parametrize("values", [DEFAULTS, ALL_FEATURES], ids=["defaults", "all-features"])
def test_good_values_pass(chart: helm_python.Chart, values: dict[str, Any]) -> None:
    merged = chart.merge_values(values)
    chart.validate_schema(merged)
    jsonschema.Draft7Validator(SCHEMA).validate(merged)


BAD_VALUES = [
    ({"imagee": {"tag": "x"}}, "", "additional properties 'imagee' not allowed"),
    ({"operator": {"logFormat": "xml"}}, "/operator/logFormat", "json"),
    ({"operator": {"replicas": 2}}, "/operator", "additional properties 'replicas'"),
    ({"operator": {"metricsPort": 70000}}, "/operator/metricsPort", "maximum"),
    ({"operator": {"watchNamespaces": ["Not A Namespace"]}}, "/operator/watchNamespaces/0",
     "does not match"),
    ({"operator": {"resources": {"requests": {"cpu": "lots"}}}},
     "/operator/resources/requests/cpu", ""),
    ({"sidecar": {"mode": "sidecar"}}, "/sidecar/mode", "native"),
    ({"webhook": {"failurePolicy": "Sometimes"}}, "/webhook/failurePolicy", "Ignore"),
    ({"webhook": {"timeoutSeconds": 31}}, "/webhook/timeoutSeconds", "maximum"),
    ({"webhook": {"certificate": {"source": "vault"}}}, "/webhook/certificate/source", "helm"),
    ({"webhook": {"certificate": {"source": "secret"}}}, "/webhook/certificate/caBundle",
     "minLength"),
    # The operator replaces a certificate with 30 days or less left: at every start.
    ({"webhook": {"certificate": {"source": "operator", "validityDays": 30}}},
     "/webhook/certificate/validityDays", "minimum"),
    ({"metrics": {"podMonitor": {"interval": "often"}}}, "/metrics/podMonitor/interval",
     "does not match"),
    ({"metrics": {"prometheusRule": {"alerts": {"s3ErrorRateHigh": {"threshold": 5}}}}},
     "/metrics/prometheusRule/alerts/s3ErrorRateHigh/threshold", "maximum"),
    ({"dashboards": {"labels": {"grafana_dashboard": 1}}}, "/dashboards/labels/grafana_dashboard",
     "string"),
    ({"commonLabels": {"team": ["a"]}}, "/commonLabels/team", "string"),
]


@pytest.mark.parametrize(("values", "where", "why"), BAD_VALUES,
                         ids=[f"{i}:{w or '/'}" for i, (_, w, _) in enumerate(BAD_VALUES)])
def test_bad_values_are_refused_naming_the_key(
    chart: helm_python.Chart, values: dict[str, Any], where: str, why: str
) -> None:
    merged = chart.merge_values(values)
    with pytest.raises(helm_python.HelmValuesError) as refused:
        chart.validate_schema(merged)
    assert f"at '{where}'" in str(refused.value)
    assert why in str(refused.value)
    # The same verdict from an independent JSON Schema implementation.
    assert list(jsonschema.Draft7Validator(SCHEMA).iter_errors(merged))
