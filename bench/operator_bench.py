"""Operator benchmark: create → Ready latency, and the time to reconcile 500 memories.

1. create → Ready: one AMFSMemory at a time, from the POST until its status says
   Ready=True (children written, credentials copied, bucket probed); after warm-up,
   ``--samples`` of them: median and p95.
2. A burst: ``--memories`` (default 200 and 500) created at once, timed until every
   one is Ready, then deleted at once, timed until every finalizer is released;
   each size ``--repeats`` times, medians reported.
3. Resume: a burst of the largest size left in place, the operator restarted, timed
   until it has re-reconciled every memory there is.

The operator is the real kopf operator, in this process; the Kubernetes API is the
test suite's emulator (KMock, tests/fixtures/kubernetes.py) and S3 a moto server,
each in a process of its own, as they would be in a cluster — so their CPU is not
charged to the operator. Results: bench/results/operator.json.

    .venv/bin/python -m bench.operator_bench [--samples 20] [--memories 200 500]
                                             [--repeats 3] [--workers 8]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import kmock
import yaml
from kmock._internal import k8s_dicts, rendering

from amfs_operator import API_VERSION, GROUP, PLURAL, VERSION
from amfs_operator.cli import OperatorConfig
from amfs_operator.kube import Kube
from bench.common import free_port, write_result
from tests.fixtures.kubernetes import (
    CRD_PATH,
    AMFSEmulator,
    EmulatorThread,
    OperatorThread,
    write_kubeconfig,
)

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ".venv/bin/python -m bench.operator_bench"
WARM_UP = 3
POLL_ONE = 0.002  # seconds between GETs while one memory becomes Ready
POLL_MANY = 0.1  # seconds between LISTs while a burst becomes Ready (the resolution)


# ---- the cluster and S3, each in its own process ----------------------------------------


@contextmanager
def moto_process() -> Iterator[str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait(lambda: _answers(f"{endpoint}/moto-api/"), 30, 0.1)
        yield endpoint
    finally:
        server.terminate()
        server.wait(10)


@contextmanager
def emulator_process() -> Iterator[str]:
    """``python -m bench.operator_bench emulator``: prints its URL, serves until stdin closes."""
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.operator_bench", "emulator"], cwd=ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        url = child.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"the Kubernetes emulator did not start: {url!r}")
        yield url
    finally:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()


class IndexedEmulator(AMFSEmulator):
    """The suite's emulator, finding an object by its key rather than by a scan.

    KMock 0.8 answers every GET, POST, PATCH and DELETE by scanning all stored
    objects, so with thousands of them (memories, children, events) a burst would
    time the emulator's quadratic lookups, not the operator; an API server looks
    objects up by key."""

    def _stored(self, request: rendering.Request, namespace: str | None,
                name: str | None) -> k8s_dicts.Object | None:
        if request.resource is None or name is None:
            return None
        key = (request.resource, namespace, name)
        return self._objects[key] if key in self._objects else None  # noqa: SIM401 (no .get)

    async def _serve_fetch(self, request: rendering.Request) -> Any:
        async with self._lock:
            obj = self._stored(request, request.namespace, request.name)
        if obj is None or obj.deleted:
            raise kmock.KubernetesObjectNotFoundError()
        return obj.raw

    async def _serve_create(self, request: rendering.Request) -> Any:
        meta = request.data.get("metadata", {})
        async with self._lock:
            obj = self._stored(request, request.namespace or meta.get("namespace"),
                               request.name or meta.get("name"))
        assert obj is not None  # created (or refused) in _handle()
        return obj.raw

    async def _serve_update(self, request: rendering.Request) -> Any:
        async with self._lock:
            obj = self._stored(request, request.namespace, request.name)
        assert obj is not None  # patched (or refused) in _handle()
        return obj.last.raw

    _serve_delete = _serve_update


class IndexedEmulatorThread(EmulatorThread):
    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with IndexedEmulator() as emulator, kmock.Server(emulator) as server:
            emulator.declare_core()
            emulator.declare_crd(yaml.safe_load(CRD_PATH.read_text()))
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()


def serve_emulator() -> None:
    emulator = IndexedEmulatorThread().start()
    print(emulator.url, flush=True)
    sys.stdin.read()  # until the parent closes the pipe (or dies)
    emulator.stop()


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
        return True
    except OSError:
        return False


# ---- talking to the API ------------------------------------------------------------------


def memories_path(namespace: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"


def create_memory(kube: Kube, namespace: str, name: str, spec: dict[str, Any]) -> None:
    body = {"apiVersion": API_VERSION, "kind": "AMFSMemory",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    kube.request("POST", memories_path(namespace), body)


def is_ready(body: dict[str, Any] | None) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in ((body or {}).get("status") or {}).get("conditions", []))


def listed(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    return list((kube.request("GET", memories_path(namespace)) or {}).get("items", []))


def wait(check: Callable[[], bool], timeout: float, interval: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s")
        time.sleep(interval)


def reconciles(operator: OperatorThread) -> float:
    text = operator.metrics()
    match = re.search(r'^amfs_operator_reconcile_total\{result="success"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


# ---- statistics --------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: a value that was measured)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 1))  # ceil(n·q), at least 1
    return ordered[int(rank) - 1]


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "samples": len(values),
        "median": round(statistics.median(values), 4),
        "p95": round(percentile(values, 0.95), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


# ---- the measurements --------------------------------------------------------------------


class Bench:
    def __init__(self, kube: Kube, bucket: str, endpoint: str) -> None:
        self.kube = kube
        self.bucket = bucket
        self.endpoint = endpoint
        self.live = 0  # memories that exist now

    def spec(self, amfs_namespace: str) -> dict[str, Any]:
        return {"bucket": self.bucket, "endpointURL": self.endpoint,
                "namespace": amfs_namespace, "credentials": {"secretRef": {"name": "creds"}}}

    def namespace(self, name: str) -> str:
        self.kube.request("POST", "/api/v1/namespaces/" + name + "/secrets", {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
            "stringData": {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"},
        })
        return name

    def ready(self, path: str) -> bool:
        return is_ready(self.kube.request("GET", path))

    def create_to_ready(self, count: int, namespace: str) -> list[float]:
        latencies = []
        for i in range(count):
            path = f"{memories_path(namespace)}/one-{i}"
            started = time.perf_counter()
            create_memory(self.kube, namespace, f"one-{i}", self.spec(f"{namespace}-{i}"))
            wait(functools.partial(self.ready, path), 30, POLL_ONE)
            latencies.append(time.perf_counter() - started)
            self.live += 1
        return latencies

    def burst(self, count: int, namespace: str, *, delete: bool) -> dict[str, float]:
        started = time.perf_counter()
        for i in range(count):
            create_memory(self.kube, namespace, f"m-{i}", self.spec(f"{namespace}-{i}"))
        created = time.perf_counter() - started
        wait(lambda: sum(map(is_ready, listed(self.kube, namespace))) == count, 900, POLL_MANY)
        ready = time.perf_counter() - started
        self.live += count
        result = {"create_requests_seconds": created, "all_ready_seconds": ready}
        if delete:
            started = time.perf_counter()
            for i in range(count):
                self.kube.request("DELETE", f"{memories_path(namespace)}/m-{i}")
            wait(lambda: not listed(self.kube, namespace), 900, POLL_MANY)
            result["all_deleted_seconds"] = time.perf_counter() - started
            self.live -= count
        return result


def median_of(runs: list[dict[str, float]]) -> dict[str, Any]:
    keys = sorted({key for run in runs for key in run})
    return {key: round(statistics.median(run[key] for run in runs if key in run), 3)
            for key in keys}


def measure(args: argparse.Namespace, kube: Kube, endpoint: str) -> dict[str, Any]:
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket)
    config = OperatorConfig(metrics_port=free_port(), health_port=0, listen_host="127.0.0.1",
                            workers=args.workers, webhook_port=0)
    bench = Bench(kube, bucket, endpoint)
    operator = OperatorThread(config).start()
    try:
        bench.create_to_ready(WARM_UP, bench.namespace("warm-up"))
        latencies = bench.create_to_ready(args.samples, bench.namespace("one-by-one"))
        print("create → Ready:", summary(latencies), flush=True)
        bursts: dict[str, Any] = {}
        for count in args.memories:
            runs = []
            for repeat in range(args.repeats):
                runs.append(bench.burst(count, bench.namespace(f"burst-{count}-{repeat}"),
                                        delete=True))
                print(f"burst of {count}:", runs[-1], flush=True)
            figures = median_of(runs)
            figures["memories_per_second"] = round(count / figures["all_ready_seconds"], 1)
            bursts[str(count)] = {"repeats": len(runs), **figures}
        bench.burst(max(args.memories), bench.namespace("resumed"), delete=False)
    finally:
        operator.stop()
    # Restart: kopf resumes every memory that exists (one reconcile each).
    operator = OperatorThread(config).start()
    try:
        before = reconciles(operator)  # the counter is process-wide; it survives the restart
        started = time.perf_counter()
        wait(lambda: reconciles(operator) - before >= bench.live, 900, POLL_MANY)
        resumed = time.perf_counter() - started
    finally:
        operator.stop()
    print(f"resume of {bench.live}: {resumed:.3f} s", flush=True)
    return {
        "create_to_ready_seconds": summary(latencies),
        "burst": bursts,
        "resume_after_restart": {"memories": bench.live, "seconds": round(resumed, 3)},
        "setup": (
            f"real kopf operator in this process ({args.workers} handler threads); KMock 0.8 "
            "Kubernetes emulator (tests/fixtures/kubernetes.py, with lookups by key) and moto "
            f"S3 server each in its own process on 127.0.0.1; {WARM_UP} warm-up memories; "
            f"bursts polled every {POLL_MANY} s"
        ),
    }


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", nargs="?", choices=("emulator",), help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, default=20,
                        help="create → Ready samples (default %(default)s)")
    parser.add_argument("--memories", type=int, nargs="+", default=[200, 500],
                        help="burst sizes (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each burst size; medians reported (default %(default)s)")
    parser.add_argument("--workers", type=int, default=8,
                        help="the operator's handler threads (default %(default)s)")
    args = parser.parse_args(argv)
    if args.role == "emulator":
        serve_emulator()
        return None

    for name, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(name, value)
    with moto_process() as endpoint, emulator_process() as url:
        kubeconfig = write_kubeconfig(Path(tempfile.mkdtemp()) / "config", url)
        os.environ["KUBECONFIG"] = str(kubeconfig)  # the operator reads it when it starts
        kube = Kube.from_environment()
        try:
            figures = measure(args, kube, endpoint)
        finally:
            kube.close()
    command = " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])])
    path = write_result("operator", figures, command)
    print(f"wrote {path}")
    return figures


if __name__ == "__main__":
    main()
