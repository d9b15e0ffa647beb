"""Operator benchmark: create → Ready latency, and reconciling 200 memories.

Runs the real operator (kopf, in-process) against the test suite's Kubernetes
emulator (KMock) and a moto S3 server, all on 127.0.0.1. Writes
bench/results/operator.json.

    .venv/bin/python -m bench.operator_bench [--samples 20] [--memories 200]

(with ``make install`` done; before that, prefix ``PYTHONPATH=sidecar:operator``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from amfs_operator.cli import OperatorConfig
from amfs_operator.kube import Kube
from tests.fixtures.kubernetes import Cluster, EmulatorThread, OperatorThread, write_kubeconfig
from tests.fixtures.s3 import free_port

RESULTS = Path(__file__).resolve().parent / "results" / "operator.json"


def is_ready(cluster: Cluster, namespace: str, name: str) -> bool:
    body = cluster.memory(namespace, name) or {}
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (body.get("status") or {}).get("conditions", []))


def ready_count(cluster: Cluster, namespace: str, prefix: str) -> int:
    """How many memories named *prefix*… are Ready, from one LIST (not one GET each)."""
    path = f"/apis/amfs.dev/v1alpha1/namespaces/{namespace}/amfsmemories"
    items = (cluster.kube.request("GET", path) or {}).get("items", [])
    return sum(
        1 for body in items if body["metadata"]["name"].startswith(prefix)
        and any(c["type"] == "Ready" and c["status"] == "True"
                for c in (body.get("status") or {}).get("conditions", []))
    )


def wait(check: Callable[[], bool], timeout: float, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("timed out")
        time.sleep(interval)


def reconciles(operator: OperatorThread) -> float:
    text = operator.metrics()
    match = re.search(r'^amfs_operator_reconcile_total\{result="success"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--memories", type=int, default=200)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "testing")
    s3_port = free_port()
    s3_server = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    s3_server.start()
    endpoint = f"http://127.0.0.1:{s3_port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)

    emulator = EmulatorThread().start()
    kubeconfig = write_kubeconfig(Path(tempfile.mkdtemp()) / "config", emulator.url)
    os.environ["KUBECONFIG"] = str(kubeconfig)
    cluster = Cluster(emulator, Kube.from_environment(), kubeconfig)
    config = OperatorConfig(metrics_port=free_port(), health_port=free_port(),
                            listen_host="127.0.0.1", workers=args.workers, webhook_port=0)
    operator = OperatorThread(config).start()

    ns = "bench"
    cluster.create_secret(ns, "creds", {"AWS_ACCESS_KEY_ID": "testing",
                                        "AWS_SECRET_ACCESS_KEY": "testing"})

    def spec(amfs_namespace: str) -> dict[str, Any]:
        return {"bucket": bucket, "endpointURL": endpoint, "namespace": amfs_namespace,
                "credentials": {"secretRef": {"name": "creds"}}}

    latencies = []
    for i in range(args.samples):
        started = time.perf_counter()
        cluster.create_memory(ns, f"one-{i}", spec(f"one-{i}"))
        wait(lambda i=i: is_ready(cluster, ns, f"one-{i}"), 30)
        latencies.append(time.perf_counter() - started)

    count = args.memories
    started = time.perf_counter()
    for i in range(count):
        cluster.create_memory(ns, f"many-{i}", spec(f"many-{i}"))
    created = time.perf_counter() - started
    wait(lambda: ready_count(cluster, ns, "many-") == count, 600, 0.5)
    all_ready = time.perf_counter() - started

    # A restart resumes (re-reconciles) everything that exists.
    operator.stop()
    total = count + args.samples
    operator = OperatorThread(config).start()
    before = reconciles(operator)  # the counter is process-wide; it survives the restart
    started = time.perf_counter()
    wait(lambda: reconciles(operator) - before >= total, 600, 0.5)
    resumed = time.perf_counter() - started
    operator.stop()
    emulator.stop()
    s3_server.stop()

    result = {
        "command": " ".join([".venv/bin/python -m bench.operator_bench", *sys.argv[1:]]),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "setup": "real kopf operator in-process; KMock 0.8 emulator (tests/fixtures/kubernetes.py)"
                 f" and moto S3 server on 127.0.0.1; handler threads: {args.workers}",
        "create_to_ready_seconds": {
            "samples": len(latencies),
            "median": round(statistics.median(latencies), 4),
            "p95": round(percentile(latencies, 0.95), 4),
            "min": round(min(latencies), 4),
            "max": round(max(latencies), 4),
        },
        "many_memories": {
            "count": count,
            "create_requests_seconds": round(created, 3),
            "all_ready_seconds": round(all_ready, 3),
            "resume_all_after_restart_seconds": round(resumed, 3),
            "resumed_memories": total,
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
