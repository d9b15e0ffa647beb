"""This project's S3Adapter and the upstream AMFS S3 adapter, side by side.

Both adapters in this process against one moto server (in a process of its
own), one bucket per adapter. For each operation:
the S3 requests it costs (botocore ``before-call`` hooks on each adapter's own
client) and its wall time (warm-up, then the median of repetitions). Then 8
writers racing 25 updates each on one key: how many acknowledged updates each
adapter actually kept.

    .venv/bin/python -m bench.adapter_compare
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any, Protocol

import boto3
from amfs_core.models import MemoryEntry, OutcomeRecord, OutcomeType, Provenance

from amfs_s3 import S3Adapter
from amfs_s3.adapter import S3Adapter as UpstreamAdapter
from bench.common import RequestCounter, moto_process, new_bucket, write_result

COMMAND = ".venv/bin/python -m bench.adapter_compare"
PREFIX = "amfs/"
OURS = "amfs_k8s"
UPSTREAM = "upstream"

WARMUP = 3
REPETITIONS = 25
LIST_SMALL = 100
LIST_LARGE = 1_000
LIST_LARGE_REPETITIONS = 5
WRITERS = 8
UPDATES_EACH = 25
RACE_TRIALS = 3


class Adapter(Protocol):
    def read(self, entity_path: str, key: str) -> MemoryEntry | None: ...
    def write(self, entry: MemoryEntry) -> MemoryEntry: ...
    def list(self, entity_path: str | None = None) -> list[MemoryEntry]: ...
    def commit_outcome(self, record: OutcomeRecord) -> list[MemoryEntry]: ...
    def close(self) -> None: ...


def entry(entity_path: str, key: str, value: object) -> MemoryEntry:
    return MemoryEntry(
        entity_path=entity_path, key=key, value=value,
        provenance=Provenance(agent_id="bench", session_id="s", written_at=datetime.now(UTC)),
    )


def outcome(ref: str, cites: str) -> OutcomeRecord:
    return OutcomeRecord(
        outcome_ref=ref, outcome_type=OutcomeType.SUCCESS, committed_at=datetime.now(UTC),
        causal_entry_keys=[cites], agent_id="bench",
    )


def make_ours(endpoint: str, bucket: str, writer_id: str | None = None) -> S3Adapter:
    adapter = S3Adapter(bucket, prefix=PREFIX, endpoint_url=endpoint, writer_id=writer_id)
    _ = adapter.conditional_writes_supported  # the one-time start-up probe, outside the counts
    return adapter


def make_upstream(endpoint: str, bucket: str) -> UpstreamAdapter:
    return UpstreamAdapter(bucket, prefix=PREFIX, endpoint_url=endpoint, region_name="us-east-1")


def client_of(adapter: Any) -> Any:
    """The boto3 client each adapter talks through (upstream keeps it in ``_s3``)."""
    return adapter.client if isinstance(adapter, S3Adapter) else adapter._s3


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Side:
    """One adapter under test, its request counter and its samples for one operation."""

    name: str
    adapter: Any
    counter: RequestCounter = field(default_factory=RequestCounter)
    seconds: list[float] = field(default_factory=list)

    def figures(self, repetitions: int) -> dict[str, Any]:
        calls = self.counter.take()
        figures = {
            "requests": {name: round(n / repetitions, 2) for name, n in calls.items()},
            "requests_total": round(sum(calls.values()) / repetitions, 2),
            "median_ms": round(statistics.median(self.seconds) * 1000, 3),
            "p95_ms": round(percentile(self.seconds, 0.95) * 1000, 3),
            "repetitions": repetitions,
        }
        self.seconds = []
        return figures


@dataclass(frozen=True)
class Operation:
    name: str
    run: Callable[[Adapter, int], object]
    prepare: Callable[[Adapter], object] = lambda adapter: None
    warmup: int = WARMUP
    repetitions: int = REPETITIONS


def measure(operation: Operation, sides: list[Side]) -> dict[str, Any]:
    """Warm up, then time ``run(adapter, i)`` alternately on each side, so load from
    anything else on the machine falls on both adapters alike."""
    for side in sides:
        operation.prepare(side.adapter)
        for i in range(operation.warmup):
            operation.run(side.adapter, -1 - i)
        side.counter.take()
    for i in range(operation.repetitions):
        for side in sides:
            start = time.perf_counter()
            operation.run(side.adapter, i)
            side.seconds.append(time.perf_counter() - start)
    return {side.name: side.figures(operation.repetitions) for side in sides}


def seed(adapter: Adapter, entity_path: str, count: int) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: adapter.write(entry(entity_path, f"k{n:05d}", n)), range(count)))


OPERATIONS = [
    Operation("new_key", lambda a, i: a.write(entry("bench", f"new-{i}", i))),
    Operation("update", lambda a, i: a.write(entry("bench", "hot", i)),
              prepare=lambda a: a.write(entry("bench", "hot", "first"))),
    Operation("read", lambda a, i: a.read("bench", "hot")),
    Operation("commit_outcome",
              lambda a, i: a.commit_outcome(outcome(f"INC-{i + 100}", "outcomes/cited")),
              prepare=lambda a: a.write(entry("outcomes", "cited", "restart the worker"))),
    Operation(f"list_{LIST_SMALL}",
              lambda a, i: check_len(a.list(f"list{LIST_SMALL}"), LIST_SMALL),
              prepare=lambda a: seed(a, f"list{LIST_SMALL}", LIST_SMALL),
              warmup=1, repetitions=10),
    Operation(f"list_{LIST_LARGE}",
              lambda a, i: check_len(a.list(f"list{LIST_LARGE}"), LIST_LARGE),
              prepare=lambda a: seed(a, f"list{LIST_LARGE}", LIST_LARGE),
              warmup=1, repetitions=LIST_LARGE_REPETITIONS),
]


def check_len(entries: list[MemoryEntry], expected: int) -> list[MemoryEntry]:
    if len(entries) != expected:
        raise AssertionError(f"list returned {len(entries)} entries, expected {expected}")
    return entries


# ----------------------------------------------------------------------
# 8 writers x 25 updates on one key
# ----------------------------------------------------------------------


def race(writers: list[Adapter], entity_path: str, key: str) -> dict[str, Any]:
    """Every writer updates one key UPDATES_EACH times at once; what was acknowledged."""
    start = threading.Barrier(len(writers))
    acknowledged: list[tuple[int, int]] = []
    failures: Counter[str] = Counter()
    lock = threading.Lock()

    def run(n: int) -> None:
        start.wait()
        for u in range(UPDATES_EACH):
            try:
                writers[n].write(entry(entity_path, key, {"writer": n, "update": u}))
            except Exception as exc:  # every failure is a figure, not a crash
                with lock:
                    failures[type(exc).__name__] += 1
            else:
                with lock:
                    acknowledged.append((n, u))

    began = time.perf_counter()
    with ThreadPoolExecutor(len(writers)) as pool:
        list(pool.map(run, range(len(writers))))
    return {
        "acknowledged": acknowledged,
        "failures": dict(failures),
        "wall_s": round(time.perf_counter() - began, 3),
    }


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


def race_figures(result: dict[str, Any], snapshots: list[dict[str, Any]],
                 current_readable: bool) -> dict[str, Any]:
    kept = {(s["value"]["writer"], s["value"]["update"]) for s in snapshots}
    acknowledged = result["acknowledged"]
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
        "current_version_readable": current_readable,
        "wall_s": result["wall_s"],
    }


def race_ours(endpoint: str) -> dict[str, Any]:
    bucket = new_bucket(endpoint)
    writers = [make_ours(endpoint, bucket, writer_id=f"writer-{n}") for n in range(WRITERS)]
    result = race(writers, "race", "hot")
    snapshots = stored_snapshots(endpoint, bucket, f"{PREFIX}default/entries/race/hot/")
    figures = race_figures(result, snapshots, writers[0].read("race", "hot") is not None)
    for adapter in writers:
        adapter.close()
    return figures


def race_upstream(endpoint: str) -> dict[str, Any]:
    bucket = new_bucket(endpoint)
    writers = [make_upstream(endpoint, bucket) for _ in range(WRITERS)]
    result = race(writers, "race", "hot")
    snapshots = stored_snapshots(endpoint, bucket, f"{PREFIX}default/race/hot/")
    figures = race_figures(result, snapshots, writers[0].read("race", "hot") is not None)
    for adapter in writers:
        adapter.close()
    return figures


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


def concurrency(endpoint: str) -> dict[str, Any]:
    """RACE_TRIALS races per adapter, each on a fresh bucket."""
    return {
        "writers": WRITERS,
        "updates_each": UPDATES_EACH,
        "trials": RACE_TRIALS,
        OURS: totals([race_ours(endpoint) for _ in range(RACE_TRIALS)]),
        UPSTREAM: totals([race_upstream(endpoint) for _ in range(RACE_TRIALS)]),
    }


# ----------------------------------------------------------------------


def compare(endpoint: str) -> dict[str, Any]:
    sides = [Side(OURS, make_ours(endpoint, new_bucket(endpoint))),
             Side(UPSTREAM, make_upstream(endpoint, new_bucket(endpoint)))]
    for side in sides:
        side.counter.attach(client_of(side.adapter))
    figures = {op.name: measure(op, sides) for op in OPERATIONS}
    for side in sides:
        side.adapter.close()
    return figures


def main() -> dict[str, Any]:
    with moto_process() as endpoint:
        figures: dict[str, Any] = {
            "setup": {
                "s3": "one moto server (python -m moto.server) in its own process, loopback HTTP",
                "versions": {
                    "moto": version("moto"), "boto3": version("boto3"),
                    "amfs-adapter-s3": version("amfs-adapter-s3"),
                    "amfs-core": version("amfs-core"),
                },
                "warmup": WARMUP,
                "repetitions": REPETITIONS,
                "timing": ("median and p95 of time.perf_counter() per operation after warm-up, the "
                           "two adapters alternating call by call"),
                "requests": "API calls per operation counted with botocore before-call hooks",
                "notes": [
                    "commit_outcome cites one entry; upstream does not store the outcome "
                    "record itself, this project does (outcomes/{ref}.json + journal)",
                    "this project's one-time conditional-write probe (2 PUT + 1 DELETE at "
                    "start-up) is excluded",
                ],
            },
            "operations": compare(endpoint),
            "concurrent_writers": concurrency(endpoint),
        }
    write_result("adapter_compare", figures, COMMAND)
    print_summary(figures)
    return figures


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
