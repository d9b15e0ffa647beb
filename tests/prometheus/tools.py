"""Prometheus' own binaries for the tests, and the chart's rules as Prometheus reads them."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import Render, objects

HERE = Path(__file__).resolve().parent
PACKAGE_HINT = ("install the Debian package `prometheus` (apt-get install -y prometheus), "
                "which provides `prometheus` and `promtool`; .ci/run does")
# What the rules are rendered with: the chart's defaults, alerts on.
RULE_VALUES = {"metrics": {"prometheusRule": {"enabled": True}}}


def binary(name: str) -> str:
    """Path of *name* (prometheus, promtool), or skip the test saying what to install."""
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not found: {PACKAGE_HINT}")
    return found


def rule_groups(render: Render, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The PrometheusRule's groups: what the Prometheus Operator hands Prometheus."""
    rules = [d for d in objects(render(values or RULE_VALUES)) if d["kind"] == "PrometheusRule"]
    assert len(rules) == 1, f"expected one PrometheusRule, found {len(rules)}"
    return list(rules[0]["spec"]["groups"])


def write_rule_file(path: Path, groups: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path
