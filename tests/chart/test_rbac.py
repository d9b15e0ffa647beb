"""The chart's RBAC against what the operator really asks the API server for.

The real operator runs against the Kubernetes API emulator with its own token and
goes through a memory's whole life (create, credential rotation, spec change,
deletion). Every request it made must be allowed by the chart's default RBAC, and
every permission the chart grants must have been used (or be justified below).

With ``webhook.certificate.source: operator`` the operator, started with the
arguments the chart gives it, issues the webhook certificate, restarts, and rotates
an expiring one; every request must pass an RBAC evaluation that honours
namespaces and resourceNames, and every rule of that mode must have been needed.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from amfs_operator import webhook_certs
from amfs_operator.cli import parse_args
from amfs_operator.kube import WEBHOOK_CONFIGURATIONS
from scripts.render_manifests import render_chart
from tests.chart.conftest import find, objects
from tests.fixtures.kubernetes import Cluster, EmulatorThread, OperatorThread, write_kubeconfig
from tests.fixtures.s3 import free_port
from tests.integration.test_webhook import wait_listening

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


def permission(request: Any) -> Permission | None:
    """What *request* needs; ``None`` for discovery (allowed to every authenticated client)."""
    if request.resource is None or not request.resource.plural:
        return None
    resource = request.resource.plural + (f"/{request.subresource}"
                                          if request.subresource else "")
    return (request.resource.group, resource, verb(request))


def by_token(requests: Iterable[Any], token: str) -> list[Any]:
    return [r for r in requests if r.headers.get("Authorization") == f"Bearer {token}"]


def used_permissions(requests: Iterable[Any]) -> set[Permission]:
    return {p for r in by_token(requests, TOKEN) if (p := permission(r)) is not None}


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


def use_token(token: str, url: str, directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Operators started from now on authenticate with *token*."""
    config = write_kubeconfig(directory / "kubeconfig", url)
    config.write_text(config.read_text().replace("test-token", token))
    monkeypatch.setenv("KUBECONFIG", str(config))


@pytest.fixture
def operator_with_own_token(
    start_operator: Callable[..., OperatorThread], k8s_emulator: EmulatorThread, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> OperatorThread:
    use_token(TOKEN, k8s_emulator.url, tmp_path, monkeypatch)
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


# ---- webhook.certificate.source: operator ---------------------------------------------------

CERTS_TOKEN = "amfs-operator-rbac-probe-certs"


@dataclasses.dataclass(frozen=True)
class Grant:
    role: str
    namespace: str | None  # None: in every namespace (a ClusterRoleBinding)
    rule: dict[str, Any]

    def allows(self, request: Any) -> bool:
        needed = permission(request)
        if needed is None:
            return True
        group, resource, v = needed
        names = self.rule.get("resourceNames")
        # A create's name is in its body, not its URL: RBAC cannot match it to resourceNames.
        return (group in self.rule["apiGroups"] and resource in self.rule["resources"]
                and v in self.rule["verbs"]
                and self.namespace in (None, request.namespace)
                and (not names or request.name in names))


def grants(docs: list[dict[str, Any]], account: dict[str, str]) -> list[Grant]:
    """The rules bound to *account*, each with the namespace it holds in, as RBAC does."""
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
             for d in docs if d["kind"] in {"Role", "ClusterRole"}}
    found = []
    for binding in docs:
        if binding["kind"] not in {"RoleBinding", "ClusterRoleBinding"} or \
                account not in binding["subjects"]:
            continue
        scope = binding["metadata"]["namespace"] if binding["kind"] == "RoleBinding" else None
        ref = binding["roleRef"]
        role = roles[(ref["kind"], scope if ref["kind"] == "Role" else None, ref["name"])]
        found.extend(Grant(ref["name"], scope, rule) for rule in role["rules"])
    return found


def settled(operator: OperatorThread) -> OperatorThread:
    """*operator* once its webhook serves: kopf is past start-up, so it stops at once."""
    wait_listening("127.0.0.1", operator.config.webhook_port)
    return operator


def test_rbac_of_an_operator_issued_webhook_certificate(
    cluster: Cluster, k8s_emulator: EmulatorThread, start_operator: Callable[..., OperatorThread],
    k8s_namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    ns = k8s_namespace
    values = {"fullnameOverride": f"amfs-{ns}",  # cluster-scoped names of its own
              "webhook": {"certificate": {"source": "operator"}}}
    docs = objects(render_chart(values, namespace=ns))
    config_doc = find(docs, "MutatingWebhookConfiguration")
    cluster.kube.request("POST", WEBHOOK_CONFIGURATIONS, config_doc)
    [container] = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    chart_config = parse_args(container["args"][1:])  # exactly what the chart runs
    overrides = {**dataclasses.asdict(chart_config), "metrics_port": free_port(),
                 "health_port": free_port(), "webhook_port": free_port(),
                 "listen_host": "127.0.0.1", "webhook_cert_dir": str(tmp_path / "certs"),
                 "namespaces": (ns,)}
    target = chart_config.webhook_target
    use_token(CERTS_TOKEN, k8s_emulator.url, tmp_path, monkeypatch)
    try:
        # Issue, then rotate one that expires in ten days.
        settled(start_operator(**overrides)).stop()
        assert cluster.get(ns, "secrets", target.secret) is not None
        expiring = webhook_certs.issue(target.dns_names, now=datetime.datetime.now(
            datetime.UTC) - datetime.timedelta(days=3640))
        cluster.kube.merge_patch(webhook_certs.secret_body(target, expiring),
                                 {"data": webhook_certs.secret_body(target, expiring)["data"]})
        operator = start_operator(**overrides)
        assert operator.error is None, operator.error
        settled(operator).stop()
    finally:
        cluster.kube.request("DELETE", f"{WEBHOOK_CONFIGURATIONS}/{target.config_name}")

    stored = cluster.get(ns, "secrets", target.secret)
    assert stored is not None and webhook_certs.from_secret(stored) != expiring  # rotated
    requests = by_token(k8s_emulator.requests(), CERTS_TOKEN)
    account = {"kind": "ServiceAccount", "name": find(docs, "ServiceAccount")["metadata"]["name"],
               "namespace": ns}
    granted = grants(docs, account)
    denied = [f"{r.method} {r.url.path}" for r in requests
              if not any(g.allows(r) for g in granted)]
    assert denied == [], "the operator needs permissions the chart does not grant"
    # Every rule of this mode, verb by verb, was needed.
    for grant in granted:
        if grant.role not in {f"amfs-{ns}-operator-webhook-tls",
                              f"amfs-{ns}-operator-webhook-config"}:
            continue
        for v in grant.rule["verbs"]:
            one = Grant(grant.role, grant.namespace, {**grant.rule, "verbs": [v]})
            assert any(one.allows(r) and permission(r) for r in requests), \
                f"{grant.role} grants {v} on {grant.rule['resources']} but it was never used"
    assert {g.role for g in granted} >= {f"amfs-{ns}-operator-webhook-tls",
                                         f"amfs-{ns}-operator-webhook-config"}
