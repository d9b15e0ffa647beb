"""No tenant reaches another's data: the attacks of issue 11, tried against real objects in
moto and the operator running as a real kopf operator under the Kubernetes emulator.

Each attack counts the other memory's objects before and after a ``deletionPolicy:
Delete``; each positive control shows the same check failing when the rule is off.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from typing import Any

import pytest

from amfs_operator import resources
from amfs_operator.spec import parse_memory
from tests.fixtures.kubernetes import Cluster, OperatorThread, condition
from tests.fixtures.s3 import all_keys
from tests.fixtures.s3_proxy import FaultProxy

MEMORY_KEY = "AKIAMEMORYOWNKEY0001"  # the memory's own credentials (its Secret)
OPERATOR_KEY = "AKIAOPERATORSOWN0001"  # the operator's own identity (its environment)
OBJECTS = 25


def add_credentials(cluster: Cluster, namespace: str) -> None:
    cluster.create_secret(namespace, "creds", {"AWS_ACCESS_KEY_ID": MEMORY_KEY,
                                               "AWS_SECRET_ACCESS_KEY": "memory-secret"})


def spec(bucket: str, endpoint: str, **extra: Any) -> dict[str, Any]:
    return {"bucket": bucket, "endpointURL": endpoint, "deletionPolicy": "Delete",
            "credentials": {"secretRef": {"name": "creds"}}, **extra}


def put_objects(s3: Any, bucket: str, root: str, count: int = OBJECTS) -> None:
    for i in range(count):
        s3.put_object(Bucket=bucket, Key=f"{root}entries/e{i}/k/v1.json", Body=b"{}")


def count(s3: Any, bucket: str, prefix: str) -> int:
    return len(all_keys(s3, bucket, prefix))


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# ---- 1. nested roots in one namespace ----------------------------------------------------

PARENT = {"namespace": "team"}  # root amfs/team/
CHILD = {"prefix": "amfs/team/", "namespace": "sub"}  # root amfs/team/sub/


@pytest.mark.parametrize("order", ["parent first", "child first"])
def test_nested_roots_in_one_namespace_refuse_the_later_and_its_delete_removes_nothing(
    order: str, cluster: Cluster, operator: OperatorThread, k8s_namespace: str,
    s3_endpoint: str, bucket: str, s3_client: Any,
) -> None:
    ns = k8s_namespace
    add_credentials(cluster, ns)
    first, second = (("parent", PARENT), ("child", CHILD)) if order == "parent first" else \
        (("child", CHILD), ("parent", PARENT))
    cluster.create_memory(ns, first[0], spec(bucket, s3_endpoint, **first[1]))
    cluster.wait_condition(ns, first[0], "Ready", "True")
    first_root = parse_memory(cluster.memory(ns, first[0]) or {}).root
    put_objects(s3_client, bucket, first_root)

    cluster.create_memory(ns, second[0], spec(bucket, s3_endpoint, **second[1]))
    body = cluster.wait_condition(ns, second[0], "Ready", "False", "PrefixConflict")
    message = condition(body, "Ready")["message"]
    assert f"{ns}/{first[0]}" in message and "in this namespace" in message
    assert cluster.get(ns, "configmaps", f"{second[0]}-amfs") is None  # nothing to mount

    before = count(s3_client, bucket, first_root)
    cluster.delete_memory(ns, second[0])
    cluster.wait_gone(ns, second[0])
    assert (before, count(s3_client, bucket, first_root)) == (OBJECTS, OBJECTS)
    assert condition(cluster.memory(ns, first[0]) or {}, "Ready")["status"] == "True"

    # The owner's own Delete still works: the check above could have failed.
    cluster.delete_memory(ns, first[0])
    cluster.wait_gone(ns, first[0])
    assert count(s3_client, bucket, first_root) == 0


def test_delete_skips_a_nested_root_that_a_bound_memory_still_holds(
    cluster: Cluster, start_operator: Callable[..., OperatorThread], k8s_namespace: str,
    s3_endpoint: str, bucket: str, s3_client: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    """Both bound by an operator that let nesting through (before this rule): the child is
    refused now, but its pods keep its ConfigMap and its data; the parent's Delete must
    leave the child's root alone."""
    ns = k8s_namespace
    caplog.set_level(logging.INFO, logger="kopf")
    add_credentials(cluster, ns)
    old = start_operator()
    cluster.create_memory(ns, "parent", spec(bucket, s3_endpoint, **PARENT))
    cluster.wait_condition(ns, "parent", "Ready", "True")
    old.stop()
    # Creation times have one-second resolution and a tie goes by name: be the later one.
    created = (cluster.memory(ns, "parent") or {})["metadata"]["creationTimestamp"]
    cluster.wait_for("the next second", lambda: datetime.datetime.now(datetime.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ") > created, timeout=5)
    child = cluster.create_memory(ns, "child", spec(bucket, s3_endpoint, **CHILD))
    cluster.kube.create(resources.config_map(parse_memory(child)))  # as the old one did
    cluster.kube.patch_memory_status(ns, "child", {"configMapName": "child-amfs"})
    put_objects(s3_client, bucket, "amfs/team/sub/")
    put_objects(s3_client, bucket, "amfs/team/", 7)

    start_operator()
    body = cluster.wait_condition(ns, "child", "Ready", "False", "PrefixConflict")
    assert body["status"]["configMapName"] == "child-amfs"  # still bound: still protected
    before = count(s3_client, bucket, "amfs/team/sub/")
    cluster.delete_memory(ns, "parent")
    cluster.wait_gone(ns, "parent")

    after = count(s3_client, bucket, "amfs/team/sub/")
    assert (before, after) == (OBJECTS, OBJECTS)
    assert count(s3_client, bucket, "amfs/team/") == OBJECTS  # the parent's 7 are gone
    kept = [r.getMessage() for r in caplog.records if "kept amfs/team/sub/" in r.getMessage()]
    assert kept and f"{ns}/child" in kept[0] and "removed 7 objects" in kept[0]


def test_delete_after_a_forbidden_move_removes_nothing_anywhere(
    cluster: Cluster, operator: OperatorThread, k8s_namespace: str, s3_endpoint: str,
    bucket: str, s3_client: Any, make_bucket: Any,
) -> None:
    """A real API server's CEL rules stop a move; the operator does not rely on them: a
    memory whose spec names another place than its ConfigMap deletes neither."""
    ns = k8s_namespace
    add_credentials(cluster, ns)
    other = make_bucket()
    cluster.create_memory(ns, "mem", spec(bucket, s3_endpoint, namespace="shared"))
    cluster.wait_condition(ns, "mem", "Ready", "True")
    put_objects(s3_client, bucket, "amfs/shared/")
    put_objects(s3_client, other, "amfs/shared/")  # someone else's data at the new place

    cluster.patch_memory(ns, "mem", {"spec": {"bucket": other}})
    cluster.wait_condition(ns, "mem", "Ready", "False", "ImmutableFieldChanged")
    cluster.delete_memory(ns, "mem")
    cluster.wait_gone(ns, "mem")
    assert (count(s3_client, bucket, "amfs/shared/"), count(s3_client, other, "amfs/shared/")) \
        == (OBJECTS, OBJECTS)


# ---- 2. endpoint spellings across namespaces ---------------------------------------------

ALIASES = ["http://localhost:{port}", "http://127.0.0.1:0{port}", "http://127.0.0.1:{port}/.",
           "http://[::ffff:127.0.0.1]:{port}", "http://LOCALHOST.:{port}/", "http://127.1:{port}"]


@pytest.mark.parametrize(("owner_spelling", "thief_spelling"), [
    *[("http://127.0.0.1:{port}", alias) for alias in ALIASES],
    ("http://localhost:{port}", "http://127.0.0.1:{port}"),  # the other order of creation
    ("http://127.0.0.1:0{port}/.", "http://localhost:{port}"),
])
def test_an_aliased_endpoint_in_another_namespace_gets_nothing(
    owner_spelling: str, thief_spelling: str, cluster: Cluster, operator: OperatorThread,
    make_namespace: Callable[[], str], s3_endpoint: str, bucket: str, s3_client: Any,
) -> None:
    port = port_of(s3_endpoint)
    owner_ns, thief_ns = make_namespace(), make_namespace()
    for ns in (owner_ns, thief_ns):
        add_credentials(cluster, ns)
    cluster.create_memory(owner_ns, "owner", spec(
        bucket, owner_spelling.format(port=port), namespace="shared"))
    cluster.wait_condition(owner_ns, "owner", "Ready", "True")
    put_objects(s3_client, bucket, "amfs/shared/")

    cluster.create_memory(thief_ns, "thief", spec(
        bucket, thief_spelling.format(port=port), namespace="shared"))
    body = cluster.wait_condition(thief_ns, "thief", "Ready", "False", "PrefixConflict")
    assert f"{owner_ns}/owner" in condition(body, "Ready")["message"]
    assert cluster.get(thief_ns, "secrets", "thief-amfs-credentials") is None

    before = count(s3_client, bucket, "amfs/shared/")
    cluster.delete_memory(thief_ns, "thief")
    cluster.wait_gone(thief_ns, "thief")
    assert (before, count(s3_client, bucket, "amfs/shared/")) == (OBJECTS, OBJECTS)
    assert condition(cluster.memory(owner_ns, "owner") or {}, "Ready")["status"] == "True"


# ---- 3. serviceAccount memories never borrow the operator's identity ---------------------

@pytest.fixture
def operator_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials in the operator's environment that moto would accept."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", OPERATOR_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "operator-secret")


def service_account(bucket: str, endpoint: str, **extra: Any) -> dict[str, Any]:
    return {"bucket": bucket, "endpointURL": endpoint, "credentials": {"serviceAccount": {}},
            **extra}


def test_service_account_memories_never_sign_with_the_operators_key(
    operator_identity: None, cluster: Cluster, start_operator: Callable[..., OperatorThread],
    make_namespace: Callable[[], str], fault_proxy: FaultProxy, bucket: str, s3_client: Any,
) -> None:
    start_operator()
    victim_ns, tenant_ns = make_namespace(), make_namespace()  # the tenant holds no Secret
    add_credentials(cluster, victim_ns)
    alias = f"http://localhost:{port_of(fault_proxy.url)}"
    cluster.create_memory(victim_ns, "owner", spec(bucket, fault_proxy.url, namespace="shared"))
    cluster.wait_condition(victim_ns, "owner", "Ready", "True")
    for root in ("amfs/shared/", "amfs/mine/", "amfs/wants-delete/"):
        put_objects(s3_client, bucket, root)

    # The attack of the issue: an alias of the owner's root, Delete, no credentials.
    cluster.create_memory(tenant_ns, "borrower", service_account(
        bucket, alias, namespace="shared", deletionPolicy="Delete"))
    # Its own root, Retain: usable, but never probed.
    cluster.create_memory(tenant_ns, "mine", service_account(bucket, alias, namespace="mine"))
    # Its own root, Delete: refused, the operator would have to delete with its own key.
    cluster.create_memory(tenant_ns, "wants-delete", service_account(
        bucket, alias, namespace="wants-delete", deletionPolicy="Delete"))

    cluster.wait_condition(tenant_ns, "borrower", "Ready", "False", "PrefixConflict")
    body = cluster.wait_condition(tenant_ns, "mine", "Ready", "True", "ConfigurationOnly")
    assert body["status"]["phase"] == "Ready"
    assert body["status"]["configMapName"] == "mine-amfs"
    for type_ in ("BucketReachable", "ConditionalWrites"):
        assert (condition(body, type_)["status"], condition(body, type_)["reason"]) == \
            ("Unknown", "NotProbed")
    assert "never lends its own" in condition(body, "BucketReachable")["message"]
    body = cluster.wait_condition(tenant_ns, "wants-delete", "Ready", "False",
                                  "DeletionNotAllowed")
    assert "spec.credentials.secretRef" in condition(body, "Ready")["message"]

    before = {root: count(s3_client, bucket, root)
              for root in ("amfs/shared/", "amfs/mine/", "amfs/wants-delete/")}
    cluster.patch_memory(tenant_ns, "mine", {"spec": {"deletionPolicy": "Delete"}})
    for name in ("borrower", "mine", "wants-delete"):
        cluster.delete_memory(tenant_ns, name)
    for name in ("borrower", "mine", "wants-delete"):
        cluster.wait_gone(tenant_ns, name)

    after = {root: count(s3_client, bucket, root) for root in before}
    assert before == after == {"amfs/shared/": OBJECTS, "amfs/mine/": OBJECTS,
                               "amfs/wants-delete/": OBJECTS}
    # Every request through the proxy was signed by the owner's key: never the operator's.
    assert set(fault_proxy.signers) == {MEMORY_KEY}


def test_allow_operator_identity_lends_it_explicitly(
    operator_identity: None, cluster: Cluster, start_operator: Callable[..., OperatorThread],
    k8s_namespace: str, fault_proxy: FaultProxy, bucket: str, s3_client: Any,
) -> None:
    """The positive control: with the flag, the same proxy sees the operator's key."""
    start_operator(allow_operator_identity=True)
    ns = k8s_namespace
    cluster.create_memory(ns, "mem", service_account(
        bucket, fault_proxy.url, namespace="mem", deletionPolicy="Delete"))
    body = cluster.wait_condition(ns, "mem", "Ready", "True", "Ready")
    assert condition(body, "BucketReachable")["reason"] == "BucketReachable"
    assert OPERATOR_KEY in fault_proxy.signers
    put_objects(s3_client, bucket, "amfs/mem/")

    cluster.delete_memory(ns, "mem")
    cluster.wait_gone(ns, "mem")
    assert count(s3_client, bucket, "amfs/mem/") == 0
