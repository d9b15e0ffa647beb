"""`promtool test rules` over every alert of the chart's PrometheusRule.

The cases live in rules_test.yaml (fires when it should, quiet when healthy, and the
failure modes of issue 14). The rule file is rendered from the chart here, so the cases
test what `helm install` deploys; only the descriptions are swapped for
``value: {{ $value }}`` so that each case also pins the alert's value.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.chart.conftest import Render
from tests.prometheus.tools import HERE, binary, rule_groups, write_rule_file

CASES = HERE / "rules_test.yaml"


def with_value_annotation(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups = copy.deepcopy(groups)
    for group in groups:
        for rule in group["rules"]:
            rule["annotations"].pop("description")
            rule["annotations"]["value"] = "{{ $value }}"
    return groups


def alert_names(groups: list[dict[str, Any]]) -> set[str]:
    return {rule["alert"] for group in groups for rule in group["rules"]}


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False)


def test_the_rendered_rules_pass_promtool_check(render: Render, tmp_path: Path) -> None:
    promtool = binary("promtool")
    rules = write_rule_file(tmp_path / "amfs-rules.yaml", rule_groups(render))
    result = run(promtool, "check", "rules", str(rules), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names(rule_groups(render)))} rules found" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_case(render: Render) -> None:
    cases = yaml.safe_load(CASES.read_text())
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in cases["tests"]:
        for check in test["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = alert_names(rule_groups(render))
    assert firing == alerts, f"no firing case: {sorted(alerts - firing)}"
    assert quiet == alerts, f"no quiet case: {sorted(alerts - quiet)}"


def test_promtool_unit_tests_of_every_alert_pass(render: Render, tmp_path: Path) -> None:
    promtool = binary("promtool")
    write_rule_file(tmp_path / "amfs-rules.yaml", with_value_annotation(rule_groups(render)))
    shutil.copy(CASES, tmp_path / CASES.name)
    result = run(promtool, "test", "rules", CASES.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
