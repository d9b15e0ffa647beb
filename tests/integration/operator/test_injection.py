"""Sidecar injection in a cluster: the chart's webhook configuration, the API server's
selection and failure policy (the emulator's admission), the real kopf operator.

The emulator stores the MutatingWebhookConfiguration the chart renders and, like an
API server, sends a pod to it only when its rules and selectors pick the pod, over
TLS trusting only its caBundle, applying the patch or refusing the pod. The
operator's status.sidecars follows pods as a kubelet reports them (pod status).
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from amfs_operator.exceptions import KubeError
from amfs_operator.kube import WEBHOOK_CONFIGURATIONS, Kube
from scripts.render_manifests import NAMESPACE, render_chart
from tests.fixtures.kubernetes import CRD_PATH, Cluster, EmulatorThread, OperatorThread, condition
from tests.fixtures.s3 import free_port
from tests.integration.operator.test_kubectl import KUBECTL, kubectl
from tests.integration.operator.test_operator import add_credentials, memory_spec
from tests.integration.test_webhook import wait_listening

SERVICE = (NAMESPACE, "amfs-webhook")
LABEL = "amfs.dev/memory"


@pytest.fixture
def chart_webhook(
    cluster: Cluster, k8s_emulator: EmulatorThread, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, Any]]:
    """The chart's webhook configuration (default values) stored in the emulator, and
    the certificate of the same rendering in tmp_path/certs."""
    monkeypatch.delenv("AMFS_WEBHOOK_FAILURE_POLICY", raising=False)
    monkeypatch.delenv("AMFS_SIDECAR_MODE", raising=False)
    docs = [d for d in yaml.safe_load_all(render_chart()["amfs/templates/webhook.yaml"]) if d]
    secret = next(d for d in docs if d["kind"] == "Secret")
    config = next(d for d in docs if d["kind"] == "MutatingWebhookConfiguration")
    certs = tmp_path / "certs"
    certs.mkdir()
    for key in ("tls.crt", "tls.key"):
        (certs / key).write_bytes(base64.b64decode(secret["data"][key]))
    cluster.kube.request("POST", WEBHOOK_CONFIGURATIONS, config)
    try:
        yield config
    finally:
        cluster.kube.request("DELETE", f"{WEBHOOK_CONFIGURATIONS}/{config['metadata']['name']}")
        assert k8s_emulator.emulator is not None
        k8s_emulator.emulator.services.pop(SERVICE, None)


@pytest.fixture
def injecting_operator(
    chart_webhook: dict[str, Any], start_operator: Callable[..., OperatorThread],
    k8s_emulator: EmulatorThread, tmp_path: Path,
) -> OperatorThread:
    port = free_port()
    assert k8s_emulator.emulator is not None
    k8s_emulator.emulator.route_service(*SERVICE, "127.0.0.1", port)
    operator = start_operator(webhook_port=port, webhook_cert_dir=str(tmp_path / "certs"))
    wait_listening("127.0.0.1", port)
    return operator


def create_pod(cluster: Cluster, namespace: str, name: str, *, labels: dict[str, str] | None = None,
               annotations: dict[str, str] | None = None) -> dict[str, Any]:
    body = {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
            "spec": {"containers": [{"name": "agent", "image": "registry.example/agent:1"}]}}
    created = cluster.kube.request("POST", Kube.core_path(namespace, "pods"), body)
    assert created is not None
    return created


def sidecar_of(pod: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in pod["spec"].get("initContainers") or []
                 if c["name"] == "amfs-sidecar"), None)


def calls_in(emulator: EmulatorThread, namespace: str) -> list[Any]:
    assert emulator.emulator is not None
    return [c for c in emulator.emulator.admission_calls if c[1] == namespace]


def ready_memory(cluster: Cluster, namespace: str, endpoint: str, bucket: str) -> None:
    add_credentials(cluster, namespace)
    cluster.create_memory(namespace, "mem", memory_spec(bucket, endpoint))
    cluster.wait_condition(namespace, "mem", "Ready", "True")


# ---- who is sent, what they get -------------------------------------------------------------


def test_memory_first_a_labelled_pod_is_injected_and_others_are_never_sent(
    cluster: Cluster, injecting_operator: OperatorThread, k8s_emulator: EmulatorThread,
    k8s_namespace: str, s3_endpoint: str, bucket: str,
) -> None:
    ns = k8s_namespace
    ready_memory(cluster, ns, s3_endpoint, bucket)

    agent = create_pod(cluster, ns, "agent", labels={LABEL: "mem", "app": "planner"})
    plain = create_pod(cluster, ns, "plain", labels={"app": "planner"})
    annotated = create_pod(cluster, ns, "annotated", annotations={LABEL: "mem"})

    sidecar = sidecar_of(agent)
    assert sidecar is not None and sidecar["restartPolicy"] == "Always"
    assert sidecar["args"][sidecar["args"].index("--listen") + 1] == "127.0.0.1:8741"
    assert {"name": "AMFS_HTTP_URL", "value": "http://127.0.0.1:8741"} in \
        agent["spec"]["containers"][0]["env"]
    assert agent["metadata"]["labels"]["amfs.dev/sidecar"] == "injected"
    assert cluster.get(ns, "pods", "agent") == agent  # stored as admitted
    for pod in (plain, annotated):
        assert sidecar_of(pod) is None and "env" not in pod["spec"]["containers"][0]
    # The API server sent exactly the labelled pod; the others never reached the operator.
    assert [(labels, allowed) for _, _, labels, allowed in calls_in(k8s_emulator, ns)] == [
        ({LABEL: "mem", "app": "planner"}, True)]

    # The annotation-only pod hears why it has no sidecar.
    [warning] = cluster.wait_for("the label-missing event", lambda: [
        e for e in cluster.events(ns) if e["reason"] == "MemoryLabelMissing"])
    assert warning["type"] == "Warning"
    assert warning["involvedObject"]["name"] == "annotated"
    assert f"label {LABEL} is not" in warning["message"]


def test_pod_first_is_refused_naming_the_memory_then_admitted_once_it_exists(
    cluster: Cluster, injecting_operator: OperatorThread, k8s_namespace: str,
    s3_endpoint: str, bucket: str,
) -> None:
    ns = k8s_namespace
    with pytest.raises(KubeError) as refused:
        create_pod(cluster, ns, "agent", labels={LABEL: "mem"})
    assert refused.value.status == 400
    assert f"AMFSMemory 'mem' does not exist in namespace '{ns}'" in refused.value.detail
    assert cluster.get(ns, "pods", "agent") is None  # nothing half-created

    add_credentials(cluster, ns)
    cluster.create_memory(ns, "mem", memory_spec(bucket, s3_endpoint))

    # As a ReplicaSet does: retry creating the pod; the memory need not be Ready yet.
    def retried() -> dict[str, Any] | None:
        try:
            return create_pod(cluster, ns, "agent", labels={LABEL: "mem"})
        except KubeError as exc:
            assert exc.status == 400, exc
            return None

    agent = cluster.wait_for("the retried pod to be admitted", retried)
    assert sidecar_of(agent) is not None
    volumes = {v["name"]: v for v in agent["spec"]["volumes"]}
    assert volumes["amfs-config"]["configMap"]["name"] == "mem-amfs"
    cluster.wait_condition(ns, "mem", "Ready", "True")


def test_without_the_operator_labelled_pods_are_refused_and_others_unaffected(
    cluster: Cluster, chart_webhook: dict[str, Any], k8s_emulator: EmulatorThread,
    k8s_namespace: str,
) -> None:
    ns = k8s_namespace
    assert k8s_emulator.emulator is not None
    # The Service exists, nothing answers behind it (the operator is down).
    k8s_emulator.emulator.route_service(*SERVICE, "127.0.0.1", free_port())

    with pytest.raises(KubeError) as refused:
        create_pod(cluster, ns, "agent", labels={LABEL: "mem"})
    assert refused.value.status == 500
    assert 'failed calling webhook "sidecar-injector.amfs.dev"' in refused.value.detail
    assert cluster.get(ns, "pods", "agent") is None

    assert create_pod(cluster, ns, "plain", labels={"app": "x"})["metadata"]["name"] == "plain"
    assert [labels for _, _, labels, _ in calls_in(k8s_emulator, ns)] == [{LABEL: "mem"}]


# ---- the memory shows its consumers ----------------------------------------------------------


def set_sidecar_ready(cluster: Cluster, namespace: str, pod: str, ready: bool) -> None:
    """What the kubelet reports for the native sidecar."""
    cluster.kube.request(
        "PATCH", Kube.core_path(namespace, "pods", pod) + "/status",
        {"status": {"phase": "Running", "initContainerStatuses": [
            {"name": "amfs-sidecar", "ready": ready, "started": True, "restartCount": 0,
             "image": "amfs", "imageID": "", "state": {"running": {}}}]}},
        content_type="application/merge-patch+json")


def sidecars(cluster: Cluster, namespace: str) -> dict[str, Any]:
    return dict(((cluster.memory(namespace, "mem") or {}).get("status") or {})
                .get("sidecars") or {})


def wait_summary(cluster: Cluster, namespace: str, summary: str) -> dict[str, Any]:
    cluster.wait_for(f"SIDECARS {summary}",
                     lambda: sidecars(cluster, namespace).get("summary") == summary)
    return cluster.memory(namespace, "mem") or {}


def printer_column(cluster: Cluster, namespace: str, column: str) -> str:
    """The column as kubectl evaluates the CRD's jsonPath for it."""
    crd = yaml.safe_load(CRD_PATH.read_text())
    [path] = [c["jsonPath"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]
              if c["name"] == column]
    out = kubectl(cluster, "get", "amem", "mem", "-n", namespace, "--no-headers",
                  "-o", f"custom-columns={column.upper()}:{path}")
    return out.strip()


def test_status_sidecars_follow_pods_becoming_ready_and_going_away_without_s3(
    cluster: Cluster, injecting_operator: OperatorThread, k8s_namespace: str,
    fault_proxy: Any, bucket: str,
) -> None:
    ns = k8s_namespace
    ready_memory(cluster, ns, fault_proxy.url, bucket)
    s3_requests = len(fault_proxy.requests)
    body = wait_summary(cluster, ns, "0/0")
    assert condition(body, "SidecarsReady")["reason"] == "NoPods"

    for name in ("agent-a", "agent-b"):
        create_pod(cluster, ns, name, labels={LABEL: "mem"})
    body = wait_summary(cluster, ns, "0/2")
    assert body["status"]["sidecars"] == {"pods": 2, "injected": 2, "ready": 0,
                                          "summary": "0/2"}
    waiting = condition(body, "SidecarsReady")
    assert (waiting["status"], waiting["reason"]) == ("False", "SidecarsNotReady")
    assert "sidecar not ready in agent-a, agent-b" in waiting["message"]

    set_sidecar_ready(cluster, ns, "agent-a", True)
    body = wait_summary(cluster, ns, "1/2")
    message = condition(body, "SidecarsReady")["message"]
    assert "not ready in agent-b" in message and "agent-a" not in message

    set_sidecar_ready(cluster, ns, "agent-b", True)
    body = wait_summary(cluster, ns, "2/2")
    assert condition(body, "SidecarsReady")["status"] == "True"
    assert condition(body, "Ready")["status"] == "True"  # the memory's own checks stay
    if KUBECTL:
        assert printer_column(cluster, ns, "Sidecars") == "2/2"

    set_sidecar_ready(cluster, ns, "agent-b", False)  # a liveness failure, say
    wait_summary(cluster, ns, "1/2")
    cluster.kube.request("DELETE", Kube.core_path(ns, "pods", "agent-b"))
    body = wait_summary(cluster, ns, "1/1")
    assert condition(body, "SidecarsReady")["status"] == "True"
    cluster.kube.request("DELETE", Kube.core_path(ns, "pods", "agent-a"))
    wait_summary(cluster, ns, "0/0")

    # Following pods cost no S3 request at all.
    assert fault_proxy.requests[s3_requests:] == []


def test_pods_created_before_the_memory_are_counted_when_it_appears(
    cluster: Cluster, operator: OperatorThread, k8s_namespace: str, s3_endpoint: str,
    bucket: str,
) -> None:
    # No webhook here: e.g. pods admitted under failurePolicy Ignore while it was down.
    ns = k8s_namespace
    create_pod(cluster, ns, "early", labels={LABEL: "mem"})
    ready_memory(cluster, ns, s3_endpoint, bucket)

    body = wait_summary(cluster, ns, "0/1")
    assert body["status"]["sidecars"]["injected"] == 0
    missing = condition(body, "SidecarsReady")
    assert (missing["reason"], missing["status"]) == ("SidecarsMissing", "False")
    assert "no sidecar in early" in missing["message"]


# ---- amfs-operator with no flags --------------------------------------------------------------


def test_amfs_operator_with_no_flags_reconciles_and_says_injection_is_off(
    cluster: Cluster, kubeconfig: Path, k8s_namespace: str, s3_endpoint: str, bucket: str,
) -> None:
    program = shutil.which("amfs-operator", path=str(Path(sys.executable).parent))
    assert program, "the amfs-operator console script is not installed"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig),
           # Not flags: where this test lets it listen (loopback, free ports).
           "AMFS_OPERATOR_LISTEN_HOST": "127.0.0.1",
           "AMFS_OPERATOR_METRICS_PORT": str(free_port()),
           "AMFS_OPERATOR_HEALTH_PORT": str(free_port())}
    for name in ("AMFS_OPERATOR_NAMESPACE", "AMFS_WEBHOOK_FAILURE_POLICY"):
        env.pop(name, None)
    process = subprocess.Popen([program], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        ready_memory(cluster, k8s_namespace, s3_endpoint, bucket)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate(timeout=10)
    assert process.returncode is not None
    lines = [line for line in output.splitlines() if "injection_off" in line]
    assert len(lines) == 1, output[-3000:]
    assert "no webhook certificate in /etc/amfs/webhook-certs" in lines[0]
    assert "--webhook-cert-source self-signed" in lines[0]
    assert "Traceback" not in output
