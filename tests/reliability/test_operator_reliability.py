"""The operator under faults: the Kubernetes API restarting mid-reconcile, S3 out of
reach, and a burst of 100 memories created and deleted.

Real parts throughout: the operator is the real kopf operator in a thread, the
Kubernetes API is KMock's emulator (tests/fixtures/kubernetes.py) over HTTP, S3 is
the moto server, reached directly, through tests/fixtures/s3_proxy.py's FaultProxy,
or not at all (a closed port). Every wait is a condition with a deadline.

"One event per transition" is checked exactly: every Event the operator posts says
``{condition}={status}: …``, so a memory's events, in order, must be its conditions'
status changes, each once — a retried handler or a re-listed watch that emitted
them again would show up as a duplicate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp.test_utils
import aiohttp.web
import aiohttp.web_server
import kmock
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from amfs_operator import GROUP, PLURAL, VERSION
from amfs_operator.cli import FINALIZER, OperatorConfig
from amfs_operator.kube import Kube
from tests.fixtures.kubernetes import (
    CRD_PATH,
    AMFSEmulator,
    Cluster,
    EmulatorThread,
    OperatorThread,
    condition,
    write_kubeconfig,
)
from tests.fixtures.s3 import all_keys, free_port
from tests.fixtures.s3_proxy import FaultProxy

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# What a memory with good credentials and a good bucket announces on its first reconcile.
BECAME_READY = [("Ready", "True"), ("CredentialsReady", "True"), ("BucketReachable", "True"),
                ("ConditionalWrites", "True")]


# ---- helpers ---------------------------------------------------------------------------


def spec(bucket: str, endpoint: str, namespace: str, **extra: Any) -> dict[str, Any]:
    return {"bucket": bucket, "endpointURL": endpoint, "namespace": namespace,
            "credentials": {"secretRef": {"name": "creds"}}, **extra}


def memories(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    """Every AMFSMemory in *namespace*, from one LIST."""
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    return list((cluster.kube.request("GET", path) or {}).get("items", []))


def is_ready(body: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (body.get("status") or {}).get("conditions", []))


def settled(body: dict[str, Any]) -> bool:
    """kopf keeps a handler's progress (retries, errors) in annotations until it is done."""
    annotations = set(body["metadata"].get("annotations") or {})
    return annotations <= {"amfs.dev/kopf-managed", "amfs.dev/last-handled-configuration"}


def all_ready(cluster: Cluster, namespace: str, count: int) -> Callable[[], bool]:
    def check() -> bool:
        items = memories(cluster, namespace)
        return len(items) == count and all(is_ready(body) for body in items)

    return check


def transitions(cluster: Cluster, namespace: str) -> dict[str, list[tuple[str, str]]]:
    """Per memory, the (condition, status) changes its Events announce, oldest first."""
    posted: dict[str, list[tuple[str, str]]] = {}
    events = sorted(cluster.events(namespace), key=lambda e: int(e["metadata"]["resourceVersion"]))
    for event in events:
        assert event["involvedObject"]["kind"] == "AMFSMemory", event
        head = event["message"].split(":", 1)[0]
        type_, _, status = head.partition("=")
        posted.setdefault(event["involvedObject"]["name"], []).append((type_, status))
    return posted


def wait_events(
    cluster: Cluster, namespace: str, expected: dict[str, list[tuple[str, str]]]
) -> None:
    """Events are posted asynchronously: wait until each memory has as many as
    expected, then compare them exactly (a duplicate or a stray one fails)."""
    cluster.wait_for(
        "the memories' events",
        lambda: all(len(transitions(cluster, namespace).get(name, [])) >= len(posted)
                    for name, posted in expected.items()),
        timeout=30,
    )
    assert transitions(cluster, namespace) == expected


def probe_failures(operator: OperatorThread) -> Counter[str]:
    """``amfs_operator_bucket_probe_failures_total`` by reason (process-wide counters)."""
    found: Counter[str] = Counter()
    for family in text_string_to_metric_families(operator.metrics()):
        if family.name == "amfs_operator_bucket_probe_failures":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    found[sample.labels["reason"]] = int(sample.value)
    return found


def memory_phases(operator: OperatorThread) -> dict[str, float]:
    """``amfs_operator_memories`` by phase: this operator's own count of live memories."""
    return {sample.labels["phase"]: sample.value
            for family in text_string_to_metric_families(operator.metrics())
            if family.name == "amfs_operator_memories" for sample in family.samples}


def run_operator(running: list[OperatorThread], **overrides: Any) -> OperatorThread:
    config = OperatorConfig(metrics_port=free_port(), health_port=0, listen_host="127.0.0.1",
                            deletion_retry=0.5, webhook_port=0)
    operator = OperatorThread(dataclasses.replace(config, **overrides)).start()
    running.append(operator)
    return operator


# ---- an API server that restarts ----------------------------------------------------------


class AbruptServer(aiohttp.test_utils.RawTestServer):
    """Stops like a crashing API server: open connections (kopf's watches) are cut at
    once instead of being drained for aiohttp's default 60 s."""

    async def _make_runner(self, debug: bool = True, **kwargs: Any) -> aiohttp.web.ServerRunner:
        server = aiohttp.web_server.Server(self._handler, loop=self._loop, debug=debug, **kwargs)
        return aiohttp.web.ServerRunner(server, debug=debug, shutdown_timeout=0.1, **kwargs)


class RestartableEmulator(EmulatorThread):
    """The suite's emulator whose HTTP server goes down and comes back on the same port
    with the same stored objects: an API server restart, as its clients see it."""

    def __init__(self) -> None:
        super().__init__()
        self.port = free_port()
        self._server: kmock.Server | None = None

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with AMFSEmulator() as emulator:
            emulator.declare_core()
            emulator.declare_crd(yaml.safe_load(CRD_PATH.read_text()))
            self.emulator = emulator
            await self._up()
            self.url = f"http://127.0.0.1:{self.port}"
            self._ready.set()
            await self._stop.wait()
            await self._down()

    async def _up(self) -> None:
        assert self.emulator is not None and self._server is None
        server = kmock.Server(self.emulator, port=self.port, server_cls=AbruptServer)
        self._server = await server.__aenter__()

    async def _down(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.__aexit__(None, None, None)

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    def go_down(self) -> list[dict[str, Any]]:
        """Stop serving; returns the memories as stored at that moment."""

        async def down() -> list[dict[str, Any]]:
            await self._down()
            assert self.emulator is not None
            async with self.emulator._lock:
                return [obj.raw for (resource, _, _), obj in self.emulator._objects.items()
                        if resource.plural == PLURAL and not obj.deleted]

        return list(self._call(down()))

    def come_up(self) -> None:
        self._call(self._up())


@pytest.fixture
def restarting_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    emulator = RestartableEmulator().start()
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", emulator.url)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    kube = Kube.from_environment()
    try:
        yield Cluster(emulator, kube, kubeconfig)
    finally:
        kube.close()
        emulator.stop()


@pytest.fixture
def operators() -> Iterator[list[OperatorThread]]:
    """Operators a test starts, stopped however it ends (before the API goes away)."""
    running: list[OperatorThread] = []
    yield running
    for operator in running:
        operator.stop()


# ---- tests -------------------------------------------------------------------------------


def test_api_server_restart_mid_reconcile(
    restarting_cluster: Cluster, operators: list[OperatorThread], s3_endpoint: str,
    bucket: str, caplog: pytest.LogCaptureFixture,
) -> None:
    cluster, ns, count = restarting_cluster, "team", 30
    emulator = cluster.emulator
    assert isinstance(emulator, RestartableEmulator)
    caplog.set_level(logging.INFO, logger="kopf")
    run_operator(operators)
    cluster.create_secret(ns, "creds", CREDENTIALS)
    for i in range(count):
        cluster.create_memory(ns, f"m{i}", spec(bucket, s3_endpoint, f"m{i}"))
    cluster.wait_for("a first memory to be Ready",
                     lambda: any(is_ready(body) for body in memories(cluster, ns)))

    at_outage = emulator.go_down()
    caplog.clear()
    ready = sum(1 for body in at_outage if is_ready(body))
    assert 0 < ready < count, f"the outage must hit mid-reconcile ({ready} of {count} Ready)"
    cluster.wait_for(
        "the operator to notice the API is gone",
        lambda: [r for r in caplog.records if "failed" in r.getMessage()],
    )
    emulator.come_up()
    # Proof that the watches are back, not just the retries: a memory that is new.
    cluster.create_memory(ns, f"m{count}", spec(bucket, s3_endpoint, f"m{count}"))
    count += 1

    cluster.wait_for("every memory to be Ready", all_ready(cluster, ns, count), timeout=60)
    cluster.wait_for("no handler left to retry (kopf's progress records purged)",
                     lambda: all(settled(body) for body in memories(cluster, ns)), timeout=30)
    for body in memories(cluster, ns):
        name = body["metadata"]["name"]
        assert body["metadata"]["finalizers"] == [FINALIZER]
        assert body["status"]["configMapName"] == f"{name}-amfs"
        assert cluster.get(ns, "configmaps", f"{name}-amfs") is not None
        assert cluster.get(ns, "secrets", f"{name}-amfs-credentials") is not None
    wait_events(cluster, ns, {f"m{i}": BECAME_READY for i in range(count)})


def test_s3_out_of_reach_then_back(
    cluster: Cluster, start_operator: Callable[..., OperatorThread], k8s_namespace: str,
    s3_endpoint: str, bucket: str, fault_proxy: FaultProxy,
) -> None:
    ns = k8s_namespace
    operator = start_operator(probe_interval=0.3)
    cluster.create_secret(ns, "creds", CREDENTIALS)
    closed = free_port()  # nothing listens here (yet)
    refused_at = f"http://127.0.0.1:{closed}"
    fault_proxy.add(status=503, times=-1)  # a provider answering SlowDown to everything
    failures = probe_failures(operator)
    cluster.create_memory(ns, "refused", spec(bucket, refused_at, "refused"))
    cluster.create_memory(ns, "throttled", spec(bucket, fault_proxy.url, "throttled"))

    refused = cluster.wait_condition(ns, "refused", "BucketReachable", "False")
    throttled = cluster.wait_condition(ns, "throttled", "BucketReachable", "False")
    for body, reason, says in [
        (refused, "EndpointUnreachable", f"Could not connect to the endpoint URL: \"{refused_at}"),
        (throttled, "S3Unavailable", "failed: 503 (the provider is unavailable or throttling"),
    ]:
        for type_ in ("BucketReachable", "Ready"):
            cond = condition(body, type_)
            assert (cond["status"], cond["reason"]) == ("False", reason), cond
            assert f"HeadBucket on bucket '{bucket}' at " in cond["message"]
            assert says in cond["message"], cond["message"]
        assert condition(body, "CredentialsReady")["status"] == "True"
        assert condition(body, "ConditionalWrites")["status"] == "Unknown"
    # The timer keeps probing through the outage without touching status or events.
    cluster.wait_for(
        "three more failed probes of each memory",
        lambda: all(probe_failures(operator)[r] >= failures[r] + 3
                    for r in ("EndpointUnreachable", "S3Unavailable")),
    )
    assert (cluster.memory(ns, "refused") or {})["status"] == refused["status"]
    assert (cluster.memory(ns, "throttled") or {})["status"] == throttled["status"]

    fault_proxy.clear()
    revived = FaultProxy(upstream=s3_endpoint, port=closed)
    revived.start()
    try:
        for name in ("refused", "throttled"):
            body = cluster.wait_condition(ns, name, "Ready", "True")
            assert body["status"]["phase"] == "Ready"
            assert condition(body, "BucketReachable")["reason"] == "BucketReachable"
            assert condition(body, "ConditionalWrites")["status"] == "True"
    finally:
        revived.stop()
    outage_and_back = [("Ready", "False"), ("CredentialsReady", "True"),
                       ("BucketReachable", "False"), ("Ready", "True"),
                       ("BucketReachable", "True"), ("ConditionalWrites", "True")]
    wait_events(cluster, ns, {"refused": outage_and_back, "throttled": outage_and_back})


def test_burst_of_100_created_then_deleted(
    cluster: Cluster, start_operator: Callable[..., OperatorThread], k8s_namespace: str,
    s3_endpoint: str, bucket: str, s3_client: Any,
) -> None:
    ns, count = k8s_namespace, 100
    operator = start_operator()
    cluster.create_secret(ns, "creds", CREDENTIALS)
    names = [f"b{i}" for i in range(count)]
    policy = {name: "Delete" if i % 2 else "Retain" for i, name in enumerate(names)}
    for name in names:
        cluster.create_memory(ns, name, spec(bucket, s3_endpoint, name,
                                             deletionPolicy=policy[name]))

    cluster.wait_for("100 memories to be Ready", all_ready(cluster, ns, count), timeout=60)
    uids = {body["metadata"]["name"]: body["metadata"]["uid"] for body in memories(cluster, ns)}
    for name in names:
        s3_client.put_object(Bucket=bucket, Key=f"amfs/{name}/entries/svc/k/v1.json", Body=b"{}")
        # The emulator collects no garbage: what a real API server needs to collect the
        # children is an owner reference to this very memory.
        for plural, child in (("configmaps", f"{name}-amfs"),
                              ("secrets", f"{name}-amfs-credentials")):
            owners = (cluster.get(ns, plural, child) or {})["metadata"]["ownerReferences"]
            assert [(o["uid"], o["controller"]) for o in owners] == [(uids[name], True)]
    wait_events(cluster, ns, dict.fromkeys(names, BECAME_READY))

    for name in names:
        cluster.delete_memory(ns, name)
    cluster.wait_for("every memory's finalizer to be released",
                     lambda: memories(cluster, ns) == [], timeout=60)

    kept = sorted(f"amfs/{name}/entries/svc/k/v1.json" for name in names
                  if policy[name] == "Retain")
    assert sorted(all_keys(s3_client, bucket)) == kept  # no probe objects either
    assert transitions(cluster, ns) == dict.fromkeys(names, BECAME_READY)  # none on deletion
    assert all(value == 0 for value in memory_phases(operator).values())

