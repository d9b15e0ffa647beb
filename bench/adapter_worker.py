"""One adapter under benchmark, in a process of its own, driven over a pipe.

Run by ``bench/adapter_compare.py`` as a script (``python bench/adapter_worker.py
SIDE ENDPOINT BUCKET``) with the interpreter of the side's virtualenv: ``.venv``
for this project, ``.venv-upstream`` for ``amfs-adapter-s3`` (the two provide the
same import name, ``amfs_s3``, so they cannot share one environment). Needs only
amfs-core and boto3, so it imports nothing from this repository.

Protocol: one JSON command per line on stdin, one JSON answer per line on stdout.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from amfs_core.models import MemoryEntry, OutcomeRecord, OutcomeType, Provenance

PREFIX = "amfs/"
OURS = "amfs_k8s"


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


class Counted:
    """An adapter with a count of the S3 API calls its client makes."""

    def __init__(self, side: str, endpoint: str, bucket: str, writer_id: str | None = None):
        from amfs_s3 import S3Adapter

        self.side = side
        if side == OURS:
            self.adapter = S3Adapter(bucket, prefix=PREFIX, endpoint_url=endpoint,
                                     region_name="us-east-1", writer_id=writer_id)
            _ = self.adapter.conditional_writes_supported  # the start-up probe, not counted
            client = self.adapter.client
        else:
            self.adapter = S3Adapter(bucket, prefix=PREFIX, endpoint_url=endpoint,
                                     region_name="us-east-1")
            client = self.adapter._s3
        self.calls: Counter[str] = Counter()
        self.deliveries: list[list[Any]] = []
        self._lock = threading.Lock()
        client.meta.events.register("before-call.s3", self._count)

    def _count(self, model: Any = None, **_: Any) -> None:
        with self._lock:
            self.calls[model.name] += 1

    def settle(self) -> None:
        """Let this project's journal records go out (outside the timed call), so
        they count as its requests and never load S3 during the other side's turn."""
        drain = getattr(self.adapter, "drain_journal", None)
        if drain is not None:
            drain(60)

    def forget(self) -> None:
        """Make this project's adapter a stranger to the bucket again: no known
        versions, no held bytes (upstream keeps nothing between calls)."""
        for cache in ("known", "bodies"):
            held = getattr(self.adapter, cache, None)
            if held is not None:
                held.clear()

    def take(self) -> dict[str, int]:
        with self._lock:
            taken = dict(sorted(self.calls.items()))
            self.calls.clear()
        return taken


def seed(adapter: Any, entity_path: str, count: int) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: adapter.write(entry(entity_path, f"k{n:05d}", n)), range(count)))


def check_len(entries: list[MemoryEntry], expected: int) -> None:
    if len(entries) != expected:
        raise AssertionError(f"list returned {len(entries)} entries, expected {expected}")


def run_operation(adapter: Any, name: str, i: int) -> None:
    if name == "new_key":
        adapter.write(entry("bench", f"new-{i}", i))
    elif name == "update":
        adapter.write(entry("bench", "hot", i))
    elif name == "read":
        if adapter.read("bench", "hot") is None:
            raise AssertionError("read found nothing")
    elif name == "commit_outcome":
        if not adapter.commit_outcome(outcome(f"INC-{i + 100}", "outcomes/cited")):
            raise AssertionError("commit_outcome updated nothing")
    elif name.startswith("list_"):
        size = int(name.split("_")[1])
        check_len(adapter.list(f"list{size}"), size)
    else:
        raise ValueError(f"unknown operation {name!r}")


def prepare_operation(adapter: Any, name: str) -> None:
    name = name.removesuffix("_cold")
    if name in ("update", "read"):
        if adapter.read("bench", "hot") is None:
            adapter.write(entry("bench", "hot", "first"))
    elif name == "commit_outcome":
        adapter.write(entry("outcomes", "cited", "restart the worker"))
    elif name.startswith("list_"):
        size = int(name.split("_")[1])
        if len(adapter.list(f"list{size}")) != size:
            seed(adapter, f"list{size}", size)


def race(side: str, endpoint: str, bucket: str, writers: int, updates: int) -> dict[str, Any]:
    """*writers* adapters, one thread each, all updating one key *updates* times."""
    made = [Counted(side, endpoint, bucket, writer_id=f"writer-{n}") for n in range(writers)]
    start = threading.Barrier(writers)
    acknowledged: list[list[int]] = []
    failures: Counter[str] = Counter()
    lock = threading.Lock()

    def run(n: int) -> None:
        start.wait()
        for u in range(updates):
            try:
                made[n].adapter.write(entry("race", "hot", {"writer": n, "update": u}))
            except Exception as exc:  # every failure is a figure, not a crash
                with lock:
                    failures[type(exc).__name__] += 1
            else:
                with lock:
                    acknowledged.append([n, u])

    began = time.perf_counter()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(run, range(writers)))
    wall = time.perf_counter() - began
    current = made[0].adapter.read("race", "hot") is not None
    for counted in made:
        counted.settle()
        counted.adapter.close()
    return {"acknowledged": acknowledged, "failures": dict(failures),
            "wall_s": round(wall, 3), "current_version_readable": current}


def serve(side: str, endpoint: str, bucket: str) -> None:
    counted = Counted(side, endpoint, bucket)
    out = sys.stdout
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if command["cmd"] == "bucket":  # a fresh bucket, and a new adapter on it
                counted.adapter.close()
                counted = Counted(side, endpoint, command["bucket"])
                answer: dict[str, Any] = {"ok": True}
            else:
                answer = handle(counted, side, endpoint, command)
        except Exception as exc:
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                      "trace": traceback.format_exc()}
        out.write(json.dumps(answer) + "\n")
        out.flush()
        if command["cmd"] == "quit":
            break
    counted.adapter.close()


def handle(counted: Counted, side: str, endpoint: str, command: dict[str, Any]) -> dict[str, Any]:
    cmd = command["cmd"]
    if cmd == "run":
        name = command["op"]
        if name.endswith("_cold"):  # the same operation by a process that saw nothing
            counted.forget()
            name = name[: -len("_cold")]
        started = time.perf_counter()
        run_operation(counted.adapter, name, command["i"])
        seconds = time.perf_counter() - started
        counted.settle()
        return {"ok": True, "seconds": seconds, "requests": counted.take()}
    if cmd == "prepare":
        prepare_operation(counted.adapter, command["op"])
        counted.settle()
        counted.take()
        return {"ok": True}
    if cmd == "race":
        return {"ok": True, **race(side, endpoint, command["bucket"], command["writers"],
                                   command["updates"])}
    if cmd == "watch":  # deliveries (key, wall-clock time) from here on, for "deliveries"
        deliveries = counted.deliveries
        counted.adapter.watch(command["entity"],
                              lambda changed: deliveries.append([changed.key, time.time()]))
        return {"ok": True}
    if cmd == "deliveries":
        return {"ok": True, "deliveries": list(counted.deliveries)}
    if cmd == "write_paced":  # bench/propagation.py's writer: random gaps, ack times
        gaps = random.Random(command["seed"])
        acks = []
        for n in range(command["count"]):
            time.sleep(gaps.uniform(*command["gap"]))
            counted.adapter.write(entry(command["entity"], f"k{n:03d}", n))
            acks.append([f"k{n:03d}", time.time()])
        return {"ok": True, "acks": acks}
    if cmd == "versions":
        from importlib.metadata import version

        names = ["amfs-core", "boto3"] + (["amfs-k8s"] if side == OURS else ["amfs-adapter-s3"])
        return {"ok": True, "python": sys.version.split()[0],
                "versions": {n: version(n) for n in names}}
    if cmd == "quit":
        return {"ok": True}
    raise ValueError(f"unknown command {cmd!r}")


if __name__ == "__main__":
    serve(*sys.argv[1:4])
