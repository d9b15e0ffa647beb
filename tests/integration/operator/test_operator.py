"""The operator as a real kopf operator against the Kubernetes emulator and moto's S3 server."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
from typing import Any

import botocore.exceptions
import pytest

from amfs_operator.probe import PROBE_DIR
from amfs_s3.config import parse_amfs_yaml
from tests.fixtures.kubernetes import Cluster, OperatorThread, condition
from tests.fixtures.s3 import all_keys, delete_bucket

ACCESS_KEY = "AKIATESTROTATION0001"
SECRET_KEY = "s3cr3t/Value+That-Must-Never-Leak"


def memory_spec(bucket: str, endpoint: str, **extra: Any) -> dict[str, Any]:
    return {
        "bucket": bucket,
        "endpointURL": endpoint,
        "credentials": {"secretRef": {"name": "creds"}},
        **extra,
    }


def add_credentials(cluster: Cluster, namespace: str, name: str = "creds", **keys: str) -> None:
    cluster.create_secret(
        namespace,
        name,
        keys or {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY},
    )


def decoded(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def metric(text: str, name: str, **labels: str) -> float:
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}{{{re.escape(selector)}}} (\S+)$" if labels else \
        rf"^{re.escape(name)} (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"{name}{{{selector}}} not exported"
    return float(match.group(1))


def test_create_becomes_ready_with_owned_children(
    cluster: Cluster, operator: OperatorThread, k8s_namespace: str, s3_endpoint: str,
    bucket: str, s3_client: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    ns = k8s_namespace
    caplog.set_level(logging.INFO)  # everything at INFO; the operator's and kopf's at DEBUG
    caplog.set_level(logging.DEBUG, logger="amfs_operator")
    caplog.set_level(logging.DEBUG, logger="kopf")
    # Custom key names in the source Secret; the copy uses the names the sidecar reads.
    add_credentials(cluster, ns, user="AKIACUSTOMKEYNAMES01", password=SECRET_KEY)
    created = cluster.create_memory(ns, "mem", memory_spec(
        bucket, s3_endpoint, namespace="team-a", prefix="agents",
        credentials={"secretRef": {"name": "creds", "accessKeyIDKey": "user",
                                   "secretAccessKeyKey": "password"}},
        sidecar={"pollInterval": "2s", "resyncInterval": "1m"},
    ))

    body = cluster.wait_condition(ns, "mem", "Ready", "True")

    status = body["status"]
    assert status["phase"] == "Ready"
    assert status["observedGeneration"] == created["metadata"]["generation"]
    assert status["configMapName"] == "mem-amfs"
    assert status["secretName"] == "mem-amfs-credentials"
    for type_, reason in [("CredentialsReady", "SecretCopied"), ("BucketReachable",
                          "BucketReachable"), ("ConditionalWrites", "Supported")]:
        cond = condition(body, type_)
        assert (cond["status"], cond["reason"]) == ("True", reason)
        assert cond["observedGeneration"] == 1 and cond["lastTransitionTime"]

    owner = {"apiVersion": "amfs.dev/v1alpha1", "kind": "AMFSMemory", "name": "mem",
             "uid": created["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    config_map = cluster.get(ns, "configmaps", "mem-amfs")
    secret = cluster.get(ns, "secrets", "mem-amfs-credentials")
    assert config_map is not None and secret is not None
    for child in (config_map, secret):
        assert child["metadata"]["ownerReferences"] == [owner]
        assert child["metadata"]["labels"] == {
            "app.kubernetes.io/name": "amfs", "app.kubernetes.io/instance": "mem",
            "app.kubernetes.io/component": "memory", "app.kubernetes.io/part-of": "amfs",
            "app.kubernetes.io/managed-by": "amfs-operator",
        }
    settings = parse_amfs_yaml(config_map["data"]["amfs.yaml"])
    assert (settings.bucket, settings.prefix, settings.namespace, settings.endpoint_url) == (
        bucket, "agents/", "team-a", s3_endpoint)
    assert (settings.poll_interval, settings.resync_interval) == (2.0, 60.0)
    assert config_map["data"]["AMFS_S3_BUCKET"] == bucket
    assert config_map["data"]["AMFS_NAMESPACE"] == "team-a"
    assert decoded(secret) == {"AWS_ACCESS_KEY_ID": "AKIACUSTOMKEYNAMES01",
                               "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    # The conditional-write probe cleaned up after itself.
    assert not [k for k in all_keys(s3_client, bucket) if PROBE_DIR in k]

    def transition_events() -> list[dict[str, Any]] | None:
        found = cluster.events(ns)
        reasons = {e["reason"] for e in found}
        return found if reasons >= {"Ready", "SecretCopied", "BucketReachable"} else None

    events = cluster.wait_for("the transition events", transition_events)
    assert all(e["involvedObject"]["uid"] == created["metadata"]["uid"] for e in events)
    # No secret value anywhere a person or a log shipper can read.
    readable = json.dumps([status, events, config_map]) + caplog.text
    assert SECRET_KEY not in readable and "AKIACUSTOMKEYNAMES01" not in readable


def test_bad_spec_is_reported_then_fixed(
    cluster: Cluster, operator: OperatorThread, k8s_namespace: str, s3_endpoint: str,
    bucket: str,
) -> None:
    ns = k8s_namespace
    add_credentials(cluster, ns)
    cluster.create_memory(ns, "mem", memory_spec("Not_A_Bucket", s3_endpoint,
                                                 deletionPolicy="Sometimes"))

    body = cluster.wait_condition(ns, "mem", "Ready", "False", "InvalidSpec")
    message = condition(body, "Ready")["message"]
    assert "spec.bucket" in message and "'Not_A_Bucket' is not a valid bucket name" in message
    assert "spec.deletionPolicy" in message
    assert body["status"]["phase"] == "Failed"
    assert cluster.get(ns, "configmaps", "mem-amfs") is None  # nothing half-written

    cluster.patch_memory(ns, "mem", {"spec": {"bucket": bucket, "deletionPolicy": "Retain"}})
    body = cluster.wait_condition(ns, "mem", "Ready", "True")
    assert body["status"]["observedGeneration"] == 2
    assert condition(body, "Ready")["observedGeneration"] == 2


def test_missing_secret_then_it_appears(
    cluster: Cluster, operator: OperatorThread, k8s_namespace: str, s3_endpoint: str,
    bucket: str,
) -> None:
    ns = k8s_namespace
    cluster.create_memory(ns, "mem", memory_spec(bucket, s3_endpoint))

    body = cluster.wait_condition(ns, "mem", "CredentialsReady", "False", "SecretNotFound")
    assert condition(body, "Ready")["reason"] == "SecretNotFound"
    assert condition(body, "BucketReachable")["status"] == "Unknown"
    assert body["status"]["phase"] == "Pending"
    assert "secretName" not in body["status"]

    add_credentials(cluster, ns)  # no change to the memory: the Secret watch must notice
    body = cluster.wait_condition(ns, "mem", "Ready", "True", timeout=10)
    assert body["status"]["secretName"] == "mem-amfs-credentials"


def test_missing_key_in_secret_is_named(
    cluster: Cluster, operator: OperatorThread, k8s_namespace: str, s3_endpoint: str,
    bucket: str,
) -> None:
    ns = k8s_namespace
    add_credentials(cluster, ns, AWS_ACCESS_KEY_ID=ACCESS_KEY)
    cluster.create_memory(ns, "mem", memory_spec(bucket, s3_endpoint))
    body = cluster.wait_condition(ns, "mem", "CredentialsReady", "False", "SecretKeyMissing")
    assert "'AWS_SECRET_ACCESS_KEY'" in condition(body, "CredentialsReady")["message"]


def test_rotated_source_secret_reaches_the_copy(
    cluster: Cluster, operator: OperatorThread, k8s_namespace: str, s3_endpoint: str,
    bucket: str,
) -> None:
    ns = k8s_namespace
    add_credentials(cluster, ns)
    cluster.create_memory(ns, "mem", memory_spec(bucket, s3_endpoint))
    cluster.wait_condition(ns, "mem", "Ready", "True")

    cluster.patch_secret(ns, "creds", {"AWS_ACCESS_KEY_ID": "AKIAROTATED000000002",
                                       "AWS_SECRET_ACCESS_KEY": "rotated-secret"})

    def rotated() -> bool:
        copy = cluster.get(ns, "secrets", "mem-amfs-credentials") or {}
        return decoded(copy) == {"AWS_ACCESS_KEY_ID": "AKIAROTATED000000002",
                                 "AWS_SECRET_ACCESS_KEY": "rotated-secret"}

    cluster.wait_for("the owned Secret to follow the rotation", rotated, timeout=10)
    assert condition(cluster.memory(ns, "mem") or {}, "Ready")["status"] == "True"


def test_missing_bucket_without_create_bucket(
    cluster: Cluster, operator: OperatorThread, k8s_namespace: str, s3_endpoint: str,
    s3_client: Any,
) -> None:
    ns = k8s_namespace
    add_credentials(cluster, ns)
    cluster.create_memory(ns, "mem", memory_spec("no-such-bucket-here", s3_endpoint))
    body = cluster.wait_condition(ns, "mem", "BucketReachable", "False", "BucketNotFound")
    assert "createBucket" in condition(body, "BucketReachable")["message"]
    assert condition(body, "Ready")["reason"] == "BucketNotFound"
    assert body["status"]["phase"] == "Failed"
    names = [b["Name"] for b in s3_client.list_buckets()["Buckets"]]
    assert "no-such-bucket-here" not in names


def test_missing_bucket_with_create_bucket(
    cluster: Cluster, operator: OperatorThread, k8s_namespace: str, s3_endpoint: str,
    s3_client: Any,
) -> None:
    ns = k8s_namespace
    add_credentials(cluster, ns)
    name = f"made-{ns}"
    cluster.create_memory(ns, "mem", memory_spec(name, s3_endpoint, createBucket=True))
    try:
        body = cluster.wait_condition(ns, "mem", "Ready", "True")
        assert condition(body, "BucketReachable")["reason"] == "BucketCreated"
        s3_client.head_bucket(Bucket=name)
    finally:
        cluster.delete_memory(ns, "mem")
        cluster.wait_gone(ns, "mem")
        with contextlib.suppress(botocore.exceptions.ClientError):
            delete_bucket(s3_client, name)


def test_provider_ignoring_conditional_writes_is_shown(
    cluster: Cluster, operator: OperatorThread, k8s_namespace: str, fault_proxy: Any,
    bucket: str,
) -> None:
    ns = k8s_namespace
    add_credentials(cluster, ns)
    fault_proxy.add(method="PUT", strip_if_none_match=True, times=-1)
    cluster.create_memory(ns, "mem", memory_spec(bucket, fault_proxy.url))
    body = cluster.wait_condition(ns, "mem", "ConditionalWrites", "False", "NotSupported")
    assert condition(body, "Ready")["status"] == "True"  # usable, with a warning
    # Events are posted asynchronously: await the one this transition owes.
    warnings = cluster.wait_for("the NotSupported event", lambda: [
        e for e in cluster.events(ns) if e["reason"] == "NotSupported"])
    assert warnings[0]["type"] == "Warning"


def test_prefix_conflict_across_namespaces(
    cluster: Cluster, operator: OperatorThread, make_namespace: Any, s3_endpoint: str,
    bucket: str,
) -> None:
    first, second = make_namespace(), make_namespace()
    for ns in (first, second):
        add_credentials(cluster, ns)
    cluster.create_memory(first, "owner", memory_spec(bucket, s3_endpoint, namespace="shared"))
    cluster.wait_condition(first, "owner", "Ready", "True")

    cluster.create_memory(second, "same", memory_spec(bucket, s3_endpoint, namespace="shared"))
    cluster.create_memory(second, "nested", memory_spec(
        bucket, s3_endpoint, prefix="amfs/shared/deeper/", namespace="x"))
    cluster.create_memory(second, "apart", memory_spec(bucket, s3_endpoint, namespace="other"))
    cluster.create_memory(first, "sibling", memory_spec(
        bucket, s3_endpoint, prefix="amfs/shared/mine/", namespace="y"))

    for ns, name in ((second, "same"), (second, "nested"), (first, "sibling")):
        body = cluster.wait_condition(ns, name, "Ready", "False", "PrefixConflict")
        message = condition(body, "Ready")["message"]
        assert f"{first}/owner" in message
        assert ("in this namespace" if ns == first else "in another namespace") in message
        assert cluster.get(ns, "configmaps", f"{name}-amfs") is None
        assert cluster.get(ns, "secrets", f"{name}-amfs-credentials") is None
    cluster.wait_condition(second, "apart", "Ready", "True")
    assert condition(cluster.memory(first, "owner") or {}, "Ready")["status"] == "True"


def test_secret_of_another_namespace_is_never_read(
    cluster: Cluster, operator: OperatorThread, make_namespace: Any, s3_endpoint: str,
    bucket: str,
) -> None:
    mine, theirs = make_namespace(), make_namespace()
    add_credentials(cluster, theirs)
    spec = memory_spec(bucket, s3_endpoint)
    spec["credentials"] = {"secretRef": {"name": "creds", "namespace": theirs}}
    cluster.create_memory(mine, "thief", spec)
    body = cluster.wait_condition(mine, "thief", "Ready", "False", "InvalidSpec")
    assert "spec.credentials.secretRef.namespace: is not a known field" in \
        condition(body, "Ready")["message"]

    cluster.create_memory(mine, "plain", memory_spec(bucket, s3_endpoint, namespace="p"))
    body = cluster.wait_condition(mine, "plain", "CredentialsReady", "False", "SecretNotFound")
    assert f"Secret {mine}/creds" in condition(body, "CredentialsReady")["message"]
    for name in ("thief", "plain"):
        assert cluster.get(mine, "secrets", f"{name}-amfs-credentials") is None


def test_immutable_fields_are_enforced_by_the_operator_too(
    cluster: Cluster, operator: OperatorThread, k8s_namespace: str, s3_endpoint: str,
    bucket: str, make_bucket: Any,
) -> None:
    # The CRD's CEL rules stop this on a real API server; the emulator has no CEL.
    ns = k8s_namespace
    add_credentials(cluster, ns)
    cluster.create_memory(ns, "mem", memory_spec(bucket, s3_endpoint))
    cluster.wait_condition(ns, "mem", "Ready", "True")
    before = cluster.get(ns, "configmaps", "mem-amfs")
    moved_to = make_bucket()

    cluster.patch_memory(ns, "mem", {"spec": {"bucket": moved_to}})
    body = cluster.wait_condition(ns, "mem", "Ready", "False", "ImmutableFieldChanged")
    assert f"bucket='{bucket}'" in condition(body, "Ready")["message"]
    assert cluster.get(ns, "configmaps", "mem-amfs") == before


def test_child_name_held_by_someone_else(
    cluster: Cluster, operator: OperatorThread, k8s_namespace: str, s3_endpoint: str,
    bucket: str,
) -> None:
    ns = k8s_namespace
    add_credentials(cluster, ns)
    cluster.kube.create({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "mem-amfs", "namespace": ns},
                         "data": {"mine": "yes"}})
    cluster.create_memory(ns, "mem", memory_spec(bucket, s3_endpoint))
    cluster.wait_condition(ns, "mem", "Ready", "False", "NameTaken")
    assert (cluster.get(ns, "configmaps", "mem-amfs") or {})["data"] == {"mine": "yes"}


def test_delete_policy_retain_keeps_the_data(
    cluster: Cluster, operator: OperatorThread, k8s_namespace: str, s3_endpoint: str,
    bucket: str, s3_client: Any,
) -> None:
    ns = k8s_namespace
    add_credentials(cluster, ns)
    cluster.create_memory(ns, "mem", memory_spec(bucket, s3_endpoint))
    body = cluster.wait_condition(ns, "mem", "Ready", "True")
    assert body["metadata"]["finalizers"] == ["amfs.dev/finalizer"]
    s3_client.put_object(Bucket=bucket, Key="amfs/mem/entries/svc/k/v1.json", Body=b"{}")

    cluster.delete_memory(ns, "mem")
    cluster.wait_gone(ns, "mem")
    assert all_keys(s3_client, bucket) == ["amfs/mem/entries/svc/k/v1.json"]


def test_delete_policy_delete_removes_only_this_memory(
    cluster: Cluster, operator: OperatorThread, k8s_namespace: str, s3_endpoint: str,
    bucket: str, s3_client: Any,
) -> None:
    ns = k8s_namespace
    add_credentials(cluster, ns)
    cluster.create_memory(ns, "mem", memory_spec(bucket, s3_endpoint, deletionPolicy="Delete"))
    cluster.wait_condition(ns, "mem", "Ready", "True")
    # More than one DeleteObjects batch (1000 keys), plus neighbours that must survive.
    for i in range(1003):
        s3_client.put_object(Bucket=bucket, Key=f"amfs/mem/entries/e{i}/k/v1.json", Body=b"{}")
    neighbours = ["amfs/mem2/entries/x/k/v1.json", "amfs/memory/entries/x/k/v1.json",
                  "other/mem/entries/x/k/v1.json"]
    for key in neighbours:
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"{}")

    cluster.delete_memory(ns, "mem")
    cluster.wait_gone(ns, "mem", timeout=60)
    assert sorted(all_keys(s3_client, bucket)) == sorted(neighbours)


def test_deletion_with_unreachable_bucket_waits_and_says_why(
    cluster: Cluster, operator: OperatorThread, k8s_namespace: str, fault_proxy: Any,
    bucket: str, s3_client: Any,
) -> None:
    ns = k8s_namespace
    add_credentials(cluster, ns)
    cluster.create_memory(ns, "mem", memory_spec(bucket, fault_proxy.url,
                                                 deletionPolicy="Delete"))
    cluster.wait_condition(ns, "mem", "Ready", "True")
    s3_client.put_object(Bucket=bucket, Key="amfs/mem/entries/svc/k/v1.json", Body=b"{}")
    fault_proxy.add(reset=True, times=-1)

    cluster.delete_memory(ns, "mem")
    body = cluster.wait_condition(ns, "mem", "Ready", "False", "DeletionBlocked")
    assert body["status"]["phase"] == "Deleting"
    assert "deletionPolicy: Retain" in condition(body, "Ready")["message"]
    assert all_keys(s3_client, bucket) == ["amfs/mem/entries/svc/k/v1.json"]
    assert any(e["reason"] == "DeletionBlocked" and e["type"] == "Warning"
               for e in cluster.events(ns))

    fault_proxy.clear()
    cluster.wait_gone(ns, "mem")
    assert all_keys(s3_client, bucket) == []


def test_reprobe_timer_notices_a_deleted_bucket(
    cluster: Cluster, start_operator: Any, k8s_namespace: str, s3_endpoint: str,
    s3_client: Any,
) -> None:
    start_operator(probe_interval=0.5)
    ns = k8s_namespace
    add_credentials(cluster, ns)
    name = f"short-{ns}"
    s3_client.create_bucket(Bucket=name)
    cluster.create_memory(ns, "mem", memory_spec(name, s3_endpoint))
    cluster.wait_condition(ns, "mem", "Ready", "True")

    def deleted() -> bool:
        # The timer's probe object may be in the bucket for a moment.
        try:
            s3_client.delete_bucket(Bucket=name)
        except botocore.exceptions.ClientError as exc:
            if exc.response["Error"]["Code"] != "BucketNotEmpty":
                raise
            return False
        return True

    cluster.wait_for("the bucket to be deleted between two probes", deleted)
    cluster.wait_condition(ns, "mem", "BucketReachable", "False", "BucketNotFound", timeout=10)


def test_restart_resumes_without_duplicates_or_flapping(
    cluster: Cluster, start_operator: Any, k8s_namespace: str, s3_endpoint: str,
    bucket: str,
) -> None:
    ns = k8s_namespace
    first = start_operator()
    add_credentials(cluster, ns)
    cluster.create_memory(ns, "mem", memory_spec(bucket, s3_endpoint))
    cluster.wait_condition(ns, "mem", "Ready", "True")
    config_map = cluster.get(ns, "configmaps", "mem-amfs")
    secret = cluster.get(ns, "secrets", "mem-amfs-credentials")
    before = cluster.memory(ns, "mem") or {}
    # kopf posts events from a queue, so one may land after Ready: count them all first.
    announced = {"Ready", "SecretCopied", "BucketReachable", "Supported"}
    cluster.wait_for("the first operator's events",
                     lambda: announced <= {e["reason"] for e in cluster.events(ns)})
    events = len(cluster.events(ns))
    resumed_after = metric(first.metrics(), "amfs_operator_reconcile_total", result="success")
    first.stop()
    seen = len(cluster.emulator.requests())

    second = start_operator()
    cluster.wait_for(
        "the restarted operator to resume the memory",
        lambda: metric(second.metrics(), "amfs_operator_reconcile_total", result="success")
        > resumed_after,
    )

    after = cluster.memory(ns, "mem") or {}
    assert after["status"] == before["status"]  # same conditions, same transition times
    assert cluster.get(ns, "configmaps", "mem-amfs") == config_map
    assert cluster.get(ns, "secrets", "mem-amfs-credentials") == secret
    assert len(cluster.events(ns)) == events
    resumed = cluster.emulator.requests()[seen:]
    assert any(r.method == "GET" and r.url.path == f"/api/v1/namespaces/{ns}/secrets/creds"
               for r in resumed)  # the resume did look at everything again
    writes = [r for r in resumed
              if r.method in {"POST", "PATCH"} and r.namespace == ns
              and r.resource is not None and r.resource.plural in {"configmaps", "secrets"}]
    assert writes == []


def test_metrics_and_liveness(
    cluster: Cluster, operator: OperatorThread, k8s_namespace: str, s3_endpoint: str,
    bucket: str,
) -> None:
    ns = k8s_namespace
    assert operator.liveness() == 200
    text = operator.metrics()
    ready_before = metric(text, "amfs_operator_memories", phase="Ready")
    failed_before = metric(text, "amfs_operator_memories", phase="Failed")
    success = metric(text, "amfs_operator_reconcile_total", result="success")
    permanent = metric(text, "amfs_operator_reconcile_total", result="permanent_error")
    probes = metric(text, "amfs_operator_bucket_probe_failures_total", reason="BucketNotFound")
    add_credentials(cluster, ns)

    cluster.create_memory(ns, "good", memory_spec(bucket, s3_endpoint))
    cluster.create_memory(ns, "bad", memory_spec("x", s3_endpoint))
    cluster.create_memory(ns, "lost", memory_spec("missing-bucket-zz", s3_endpoint))
    cluster.wait_condition(ns, "good", "Ready", "True")
    cluster.wait_condition(ns, "bad", "Ready", "False", "InvalidSpec")
    cluster.wait_condition(ns, "lost", "Ready", "False", "BucketNotFound")

    text = operator.metrics()
    assert metric(text, "amfs_operator_memories", phase="Ready") == ready_before + 1
    assert metric(text, "amfs_operator_memories", phase="Failed") == failed_before + 2
    assert metric(text, "amfs_operator_reconcile_total", result="success") >= success + 2
    assert metric(text, "amfs_operator_reconcile_total", result="permanent_error") >= \
        permanent + 1
    assert metric(text, "amfs_operator_bucket_probe_failures_total",
                  reason="BucketNotFound") >= probes + 1
    assert metric(text, "amfs_operator_reconcile_duration_seconds_count") >= 3

    cluster.delete_memory(ns, "good")
    cluster.wait_gone(ns, "good")
    assert metric(operator.metrics(), "amfs_operator_memories", phase="Ready") == ready_before
