"""The chart's RBAC against what the operator really asks the API server for.

The real operator runs against the Kubernetes API emulator with its own token and
goes through a memory's whole life (create, credential rotation, spec change,
deletion). Every request it made must be allowed by the chart's default RBAC, and
every permission the chart grants must have been used (or be justified below).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from tests.chart.conftest import find
from tests.fixtures.kubernetes import Cluster, EmulatorThread, OperatorThread, write_kubeconfig

TOKEN = "amfs-operator-rbac-probe"
# Granted although the scenario cannot show them being used, and why.
JUSTIFIED: dict[tuple[str, str, str], str] = {
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"):
        "kopf's resource observer lists and watches CRDs to notice AMFSMemory's definition "
        "change (kopf/_core/reactor/observation.py); the emulator serves no CRD API",
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"): "as for list",
}

Permission = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)


def verb(request: Any) -> str:
    method = str(request.method).upper().rsplit(".", 1)[-1]
    if method == "GET":
        if request.name:
            return "get"
        return "watch" if request.params.get("watch") in {"true", "1"} else "list"
    if method == "DELETE":
        return "delete" if request.name else "deletecollection"
    return {"POST": "create", "PATCH": "patch", "PUT": "update"}[method]


def used_permissions(requests: Iterable[Any]) -> set[Permission]:
    used = set()
    for request in requests:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            continue
        if request.resource is None or not request.resource.plural:
            continue  # discovery: allowed to every authenticated client
        resource = request.resource.plural + (f"/{request.subresource}"
                                              if request.subresource else "")
        used.add((request.resource.group, resource, verb(request)))
    return used


def granted_permissions(docs: list[dict[str, Any]]) -> set[Permission]:
    """What the operator's ServiceAccount may do in any namespace (default values)."""
    bound = {b["roleRef"]["name"] for b in docs if b["kind"] == "ClusterRoleBinding"
             and b["subjects"] == [{"kind": "ServiceAccount", "name": "amfs-operator",
                                    "namespace": "amfs-system"}]}
    granted = set()
    for role in [d for d in docs if d["kind"] == "ClusterRole"]:
        assert role["metadata"]["name"] in bound, f"{role['metadata']['name']} is not bound"
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for v in rule["verbs"]:
                        granted.add((group, resource, v))
    return granted


def spec(bucket: str, endpoint: str, poll: str = "5s") -> dict[str, Any]:
    return {"bucket": bucket, "endpointURL": endpoint, "deletionPolicy": "Delete",
            "credentials": {"secretRef": {"name": "creds"}}, "sidecar": {"pollInterval": poll}}


def decoded(secret: dict[str, Any] | None, key: str) -> str | None:
    value = ((secret or {}).get("data") or {}).get(key)
    return base64.b64decode(value).decode() if value else None


@pytest.fixture
def operator_with_own_token(
    start_operator: Callable[..., OperatorThread], k8s_emulator: EmulatorThread, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> OperatorThread:
    config = write_kubeconfig(tmp_path / "kubeconfig", k8s_emulator.url)
    config.write_text(config.read_text().replace("test-token", TOKEN))
    monkeypatch.setenv("KUBECONFIG", str(config))
    return start_operator()


def test_rbac_allows_every_request_and_grants_nothing_unused(
    default_docs: list[dict[str, Any]], cluster: Cluster, k8s_emulator: EmulatorThread,
    operator_with_own_token: OperatorThread, k8s_namespace: str, s3_endpoint: str, bucket: str,
) -> None:
    ns = k8s_namespace
    cluster.create_secret(ns, "creds", {"AWS_ACCESS_KEY_ID": "AKIA1", "AWS_SECRET_ACCESS_KEY": "a"})
    cluster.create_memory(ns, "team", spec(bucket, s3_endpoint))
    cluster.wait_condition(ns, "team", "Ready", "True")
    # A rotated source Secret is copied; a changed spec rewrites the ConfigMap.
    cluster.patch_secret(ns, "creds", {"AWS_ACCESS_KEY_ID": "AKIA2"})
    cluster.wait_for("the rotated key", lambda: decoded(
        cluster.get(ns, "secrets", "team-amfs-credentials"), "AWS_ACCESS_KEY_ID") == "AKIA2")
    cluster.patch_memory(ns, "team", {"spec": {"sidecar": {"pollInterval": "2s"}}})
    cluster.wait_for("the new poll interval", lambda: (
        (cluster.get(ns, "configmaps", "team-amfs") or {}).get("data", {})
        .get("AMFS_POLL_INTERVAL") == "2"))
    cluster.delete_memory(ns, "team")
    cluster.wait_gone(ns, "team")
    operator_with_own_token.stop()

    used = used_permissions(k8s_emulator.requests())
    granted = granted_permissions(default_docs)

    assert ("amfs.dev", "amfsmemories", "watch") in used  # the probe saw the operator at all
    assert used - granted == set(), "the operator needs permissions the chart does not grant"
    unused = granted - used - set(JUSTIFIED)
    assert unused == set(), "the chart grants permissions the operator never used"
    assert find(default_docs, "ClusterRoleBinding", "amfs-operator")["subjects"][0]["name"] == \
        "amfs-operator"
