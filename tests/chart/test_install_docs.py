"""The README's "Install on Kubernetes" section says only what the chart does."""

from __future__ import annotations

import json
import re
from typing import Any

import helm_python
import yaml

from amfs_operator import injection, webhook_certs
from amfs_operator.cli import parse_args
from scripts import render_manifests as rm
from scripts.render_manifests import CHART
from tests.chart.conftest import ALL_FEATURES, DEPLOY, ROOT, Render, find, objects


def readme_section() -> str | None:
    """The README's install section, up to the next level-2 heading."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^## Install on Kubernetes\n.*?(?=^## (?!#)|\Z)", readme,
                      re.MULTILINE | re.DOTALL)
    return match.group(0) if match else None


DOC = readme_section() or ""


def test_the_readme_has_the_install_section() -> None:
    assert DOC.startswith("## Install on Kubernetes")


DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())


def value_at(path: str) -> Any:
    node: Any = DEFAULTS
    for part in path.split("."):
        if node == {}:  # a map such as labels: any key is yours
            return None
        assert isinstance(node, dict) and part in node, f"{path} is not a chart value"
        node = node[part]
    return node


def mentioned_value_paths() -> set[str]:
    tops = "|".join(re.escape(k) for k in DEFAULTS)
    return set(re.findall(rf"`((?:{tops})(?:\.[A-Za-z]+)+)(?:=[^`]*)?`", DOC))


def test_every_value_the_doc_names_exists() -> None:
    paths = mentioned_value_paths()
    assert len(paths) >= 12
    for path in paths:
        value_at(path)


def test_the_table_states_the_real_defaults() -> None:
    rows = re.findall(r"^\| `([\w.]+)` \| ([^|]+) \|", DOC, re.MULTILINE)
    assert len(rows) >= 10
    for path, stated in rows:
        default = value_at(path)
        shown = re.findall(r"`([^`]*)`", stated)
        if isinstance(default, bool):
            assert shown == [str(default).lower()], path
        elif isinstance(default, list):
            assert shown == (default or [json.dumps(default)]), path
        elif default == "":
            assert not shown, f"{path}: empty by default, the doc shows {shown}"
        else:
            assert shown == [str(default)], path


def test_every_set_flag_is_accepted_by_the_chart(chart: helm_python.Chart) -> None:
    sets = re.findall(r"--set (\S+)", DOC)
    assert sets
    values: dict[str, Any] = {}
    for expression in sets:
        value_at(expression.split("=", 1)[0])
        values = _deep_merge(values, helm_python.parse_set_string(expression))
    chart.validate_schema(chart.merge_values(values))
    assert values["metrics"]["podMonitor"] == {"enabled": True,
                                               "labels": {"release": "kube-prometheus-stack"}}


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _deep_merge(merged.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def test_files_and_commands_the_doc_points_to_exist() -> None:
    for path in set(re.findall(r"\b((?:deploy|charts|scripts)/[\w./-]*\w)", DOC)):
        assert (ROOT / path).exists(), path


def test_the_kubectl_path_says_how_deploy_gets_its_certificate(
    default_docs: list[dict[str, Any]],
) -> None:
    kubectl = DOC[DOC.index("### With kubectl"):]
    kubectl = kubectl[:kubectl.index("\n### ", 1)]
    source = rm.DEPLOY_VALUES["webhook"]["certificate"]["source"]
    assert f"`webhook.certificate.source={source}`" in kubectl
    deploy = [d for p in sorted(DEPLOY.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())
              if d]
    args = find(deploy, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    config = parse_args(args[1:])
    for name in (config.webhook_secret, config.webhook_namespace, config.webhook_config_name):
        assert f"`{name}`" in kubectl
    assert f"less than {webhook_certs.MIN_REMAINING.days} days" in kubectl
    assert "PRIVATE KEY" not in "".join(p.read_text() for p in DEPLOY.glob("*.yaml"))
    assert find(default_docs, "Secret", config.webhook_secret)  # Helm's default: unchanged


def test_names_in_the_doc_are_the_rendered_names(default_docs: list[dict[str, Any]]) -> None:
    assert find(default_docs, "Deployment", "amfs-operator")
    assert find(default_docs, "MutatingWebhookConfiguration", "amfs-sidecar-injector")
    crd = next(d for d in yaml.safe_load_all((DEPLOY / "01-crd.yaml").read_text()) if d)
    assert crd["metadata"]["name"] == "amfsmemories.amfs.dev" and "amfsmemories.amfs.dev" in DOC
    namespace = [d for d in yaml.safe_load_all((DEPLOY / "00-namespace.yaml").read_text()) if d]
    assert namespace[0]["metadata"]["name"] == "amfs-system"
    image = f"{DEFAULTS['image']['repository']}:{yaml.safe_load((CHART / 'Chart.yaml').read_text())['appVersion']}"  # noqa: E501
    assert f"`{image}`" in DOC


def test_annotations_in_the_doc_are_the_ones_the_injector_reads() -> None:
    known = {injection.LABEL_MEMORY, injection.LABEL_SIDECAR, injection.ANNOTATION_MEMORY,
             injection.ANNOTATION_POLL_INTERVAL, injection.ANNOTATION_HTTP_PORT,
             *injection.RESOURCE_ANNOTATIONS}
    mentioned = set(re.findall(r"amfs\.dev/[a-z-]+", DOC))
    assert mentioned == known


def test_the_doc_opts_in_by_label() -> None:
    section = DOC[DOC.index("### Label a pod"):]
    snippet = yaml.safe_load(section[section.index("```yaml") + 7:section.index("```\n", 10)])
    assert snippet["spec"]["template"]["metadata"] == {
        "labels": {injection.LABEL_MEMORY: "agent-memory"}}


def test_alerts_and_dashboards_in_the_doc_are_the_charts(render: Render) -> None:
    docs = objects(render(ALL_FEATURES))
    rule = find(docs, "PrometheusRule")
    alerts = {r["alert"] for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(re.findall(r"`(AMFS[A-Z][a-z]+[A-Z][A-Za-z0-9]+)`", DOC)) == alerts
    stale = value_at("metrics.prometheusRule.alerts.pollStale.intervals")
    assert f"no successful poll for {stale} poll intervals" in DOC
    assert value_at("metrics.prometheusRule.alerts.memoryNotReady.for") == "10m"
    assert "not Ready for 10 minutes" in DOC
    titles = {json.loads(text)["title"] for d in docs if d["kind"] == "ConfigMap"
              for text in d["data"].values()}
    assert titles == {"AMFS / Memory overview", "AMFS / Sidecar"}
    for title in titles:
        assert f'"{title}"' in DOC
