"""Rendering the chart with Helm's own engine (helm-python-sdk) for the chart tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from scripts.render_manifests import CHART, NAMESPACE, RELEASE

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
EXAMPLES = DEPLOY / "examples"

# Every optional feature on, with non-default values where a value changes the output.
ALL_FEATURES: dict[str, Any] = {
    "commonLabels": {"team": "platform"},
    "imagePullSecrets": [{"name": "regcred"}],
    "operator": {
        "watchNamespaces": ["agents", "research"],
        "logFormat": "text",
        "podAnnotations": {"example.com/scrape": "false"},
        "podLabels": {"tier": "control"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops",
                         "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
        "priorityClassName": "system-cluster-critical",
    },
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/amfs"}},
    "sidecar": {"image": "registry.example/amfs-sidecar:1.0", "imagePullPolicy": "Always",
                "mode": "container"},
    "webhook": {"failurePolicy": "Fail", "timeoutSeconds": 5,
                "excludeNamespaces": ["kube-system", "monitoring"]},
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "podMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                       "namespaces": ["agents"]},
        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    },
    "dashboards": {"annotations": {"grafana_folder": "AMFS"}, "namespace": "monitoring"},
}


def objects(rendered: Mapping[str, str]) -> list[dict[str, Any]]:
    """Every object of a rendering, in template order."""
    found = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".txt"):
            continue
        found.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return found


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


@pytest.fixture(scope="session")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


Render = Callable[..., dict[str, str]]


@pytest.fixture(scope="session")
def render(chart: helm_python.Chart) -> Render:
    def render(values: Mapping[str, Any] | None = None, **options: Any) -> dict[str, str]:
        merged = chart.merge_values(dict(values or {}))
        chart.validate_schema(merged)  # what `helm install` does before rendering
        return chart.render(
            dict(values) if values else None,
            name=options.get("name", RELEASE),
            namespace=options.get("namespace", NAMESPACE),
            is_install=True,
        )

    return render


@pytest.fixture(scope="session")
def default_docs(render: Render) -> list[dict[str, Any]]:
    return objects(render())


@pytest.fixture(scope="session")
def all_docs(render: Render) -> list[dict[str, Any]]:
    return objects(render(ALL_FEATURES))


@pytest.fixture(scope="session")
def crd() -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "crds" / "amfsmemories.amfs.dev.yaml").read_text()))
