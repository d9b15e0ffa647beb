"""Cross-process change propagation, and what polling for it costs.

1. A writer in another process (this module run as ``writer``) writes entries;
   the time from each acknowledged write to the watch callback in this process
   is measured, for this project's adapter and for the upstream one (whose
   ``watch()`` only sees writes made through the same instance).
2. The S3 requests the watch poller costs per minute with 1,000 and 10,000
   entries in the bucket: N idle journal polls and one full resync counted with
   botocore hooks, extrapolated to the default 5 s poll and 5 min resync.

    .venv/bin/python -m bench.propagation
"""

from __future__ import annotations

import argparse
import json
import math
import queue
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
from amfs_core.models import MemoryEntry
from botocore.config import Config

from amfs_s3 import S3Adapter
from amfs_s3.config import DEFAULT_POLL_INTERVAL, DEFAULT_RESYNC_INTERVAL
from amfs_s3.journal import JournalCursor
from amfs_s3.layout import Layout
from bench import upstream_venv
from bench.adapter_compare import OURS, PREFIX, UPSTREAM, Worker, percentile
from bench.adapter_worker import entry
from bench.common import RequestCounter, moto_process, new_bucket, write_result

COMMAND = ".venv/bin/python -m bench.propagation"
REPO = Path(__file__).resolve().parent.parent

WATCH_POLL_INTERVAL = 1.0
WRITES = 20
UPSTREAM_WRITES = 5
# Writes are spaced at random so they do not fall into step with the poll.
WRITE_GAP = (0.3, 0.9)
# How long after the last acknowledged write a delivery still counts.
DELIVERY_WAIT = 10.0
ENTRY_COUNTS = (1_000, 10_000)
OLD_JOURNAL_RECORDS = 1_000
POLLS_MEASURED = 12


# ----------------------------------------------------------------------
# the writer process
# ----------------------------------------------------------------------


def run_writer(side: str, endpoint: str, bucket: str, count: int, seed: int) -> None:
    """Wait for 'go' on stdin, then write *count* entries, printing each ack time."""
    adapter = S3Adapter(bucket, prefix=PREFIX, endpoint_url=endpoint)
    _ = adapter.conditional_writes_supported
    print("ready", flush=True)
    sys.stdin.readline()
    gaps = random.Random(seed)
    for n in range(count):
        time.sleep(gaps.uniform(*WRITE_GAP))
        adapter.write(entry("prop", f"k{n:03d}", n))
        print(json.dumps({"key": f"k{n:03d}", "acked_at": time.time()}), flush=True)
    print(json.dumps({"done": True}), flush=True)
    adapter.close()


def start_writer(side: str, endpoint: str, bucket: str, count: int) -> subprocess.Popen[str]:
    writer = subprocess.Popen(
        [sys.executable, "-m", "bench.propagation", "writer", "--adapter", side,
         "--endpoint", endpoint, "--bucket", bucket, "--count", str(count)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert writer.stdout is not None
    if writer.stdout.readline().strip() != "ready":
        writer.kill()
        raise RuntimeError("the writer process did not start")
    return writer


def acknowledgements(writer: subprocess.Popen[str]) -> dict[str, float]:
    """Tell the writer to go; key → wall-clock time its write was acknowledged."""
    assert writer.stdin is not None and writer.stdout is not None
    writer.stdin.write("go\n")
    writer.stdin.flush()
    acked: dict[str, float] = {}
    for line in writer.stdout:
        record = json.loads(line)
        if record.get("done"):
            break
        acked[record["key"]] = record["acked_at"]
    writer.wait(30)
    return acked


# ----------------------------------------------------------------------
# the watching process (this one)
# ----------------------------------------------------------------------


def wait_for(inbox: queue.Queue[tuple[str, float]], delivered: dict[str, float],
             wanted: set[str], deadline: float) -> None:
    """Drain deliveries into *delivered* until every wanted key arrived or the deadline."""
    while not wanted <= delivered.keys():
        remaining = deadline - time.time()
        if remaining <= 0:
            return
        try:
            key, at = inbox.get(timeout=remaining)
        except queue.Empty:
            return
        delivered.setdefault(key, at)


def propagate_upstream(endpoint: str) -> dict[str, Any]:
    """Upstream's watcher and writer, each a ``bench/adapter_worker.py`` process with
    ``.venv-upstream``'s interpreter: ``amfs_s3`` in this process is this project's."""
    python = upstream_venv.ensure()
    bucket = new_bucket(endpoint)
    watcher = Worker(UPSTREAM, python, endpoint, bucket)
    writer = Worker(UPSTREAM, python, endpoint, bucket)
    try:
        watcher.ask(cmd="watch", entity="prop")
        acks = writer.ask(cmd="write_paced", entity="prop", count=UPSTREAM_WRITES,
                          gap=list(WRITE_GAP), seed=6)["acks"]
        acked = {key: at for key, at in acks}
        # Nothing to await: upstream's watch() only hears its own instance's writes.
        time.sleep(DELIVERY_WAIT)
        delivered = {key: at for key, at in watcher.ask(cmd="deliveries")["deliveries"]}
    finally:
        watcher.close()
        writer.close()
    return delivery_figures(acked, delivered)


def delivery_figures(acked: dict[str, float], delivered: dict[str, float]) -> dict[str, Any]:
    latencies = [delivered[k] - at for k, at in acked.items() if k in delivered]
    figures: dict[str, Any] = {
        "writes": len(acked),
        "delivered": len(latencies),
        "not_delivered": len(acked) - len(latencies),
    }
    if latencies:
        figures.update(
            median_s=round(statistics.median(latencies), 3),
            p95_s=round(percentile(latencies, 0.95), 3),
            max_s=round(max(latencies), 3),
        )
    else:
        figures["median_s"] = None
    return figures


def propagate(endpoint: str, side: str) -> dict[str, Any]:
    if side == UPSTREAM:
        return propagate_upstream(endpoint)
    bucket = new_bucket(endpoint)
    inbox: queue.Queue[tuple[str, float]] = queue.Queue()
    delivered: dict[str, float] = {}

    def on_change(changed: MemoryEntry) -> None:
        inbox.put((changed.key, time.time()))

    watcher = S3Adapter(bucket, prefix=PREFIX, endpoint_url=endpoint,
                        poll_interval=WATCH_POLL_INTERVAL,
                        resync_interval=DEFAULT_RESYNC_INTERVAL)
    handle = watcher.watch("prop", on_change)
    # The clock starts only once the poller is live: a write by another
    # instance must have come round.
    with S3Adapter(bucket, prefix=PREFIX, endpoint_url=endpoint) as primer:
        primer.write(entry("prop", "primer", 0))
    wait_for(inbox, delivered, {"primer"}, time.time() + 15)
    if "primer" not in delivered:
        raise RuntimeError("the watch poller never delivered the primer write")
    acked = acknowledgements(start_writer(side, endpoint, bucket, WRITES))
    wait_for(inbox, delivered, set(acked), max(acked.values()) + DELIVERY_WAIT)
    handle.cancel()
    watcher.close()
    return delivery_figures(acked, delivered)


# ----------------------------------------------------------------------
# polling cost
# ----------------------------------------------------------------------


def seed_bucket(endpoint: str, bucket: str, entries: int) -> None:
    """*entries* version objects in the layout, plus journal records older than the
    look-back window, PUT directly (the adapter would take far longer)."""
    layout = Layout(PREFIX)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          config=Config(max_pool_connections=32))
    written_at = datetime.now(UTC) - timedelta(hours=1)
    old_ms = int(written_at.timestamp() * 1000)
    base = entry("seed", "k", 0)
    template = base.model_copy(
        update={"provenance": base.provenance.model_copy(update={"written_at": written_at})}
    )

    def put_entry(n: int) -> None:
        snapshot = template.model_copy(update={"entity_path": f"team-{n % 50}",
                                               "key": f"k{n:05d}", "value": n})
        client.put_object(
            Bucket=bucket, Key=layout.version_key(snapshot.entity_path, snapshot.key, 1),
            Body=snapshot.model_dump_json().encode(), ContentType="application/json",
        )

    def put_journal(n: int) -> None:
        record = {"kind": "write", "written_at_ms": old_ms, "writer": "seed",
                  "entity_path": f"team-{n % 50}", "key": f"k{n:05d}", "version": 1}
        client.put_object(Bucket=bucket, Key=layout.journal_key(old_ms, "seed", n),
                          Body=json.dumps(record).encode(), ContentType="application/json")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put_entry, range(entries)))
        list(pool.map(put_journal, range(min(entries, OLD_JOURNAL_RECORDS))))


def polling_cost(endpoint: str, entries: int) -> dict[str, Any]:
    bucket = new_bucket(endpoint)
    seed_bucket(endpoint, bucket, entries)
    counter = RequestCounter()
    adapter = S3Adapter(bucket, prefix=PREFIX, endpoint_url=endpoint, request_observer=counter)

    # Exactly the two calls the watch loop makes: poll_journal every poll
    # interval, scan_versions (the full resync) every resync interval.
    cursor = JournalCursor.starting_now(adapter.layout, int(time.time() * 1000))
    poll_seconds: list[float] = []
    for _ in range(POLLS_MEASURED):
        start = time.perf_counter()
        if adapter.poll_journal(cursor):
            raise AssertionError("an idle poll found changes")
        poll_seconds.append(time.perf_counter() - start)
    per_poll = sum(counter.take().values()) / POLLS_MEASURED

    start = time.perf_counter()
    scanned = adapter.scan_versions()
    resync_seconds = time.perf_counter() - start
    if len(scanned) != entries:
        raise AssertionError(f"resync saw {len(scanned)} entries, expected {entries}")
    resync_calls = counter.take()
    per_resync = sum(resync_calls.values())
    adapter.close()

    polls_per_minute = 60 / DEFAULT_POLL_INTERVAL
    resyncs_per_minute = 60 / DEFAULT_RESYNC_INTERVAL
    return {
        "entries": entries,
        "old_journal_records": min(entries, OLD_JOURNAL_RECORDS),
        "requests_per_idle_poll": per_poll,
        "requests_per_full_resync": per_resync,
        "resync_requests": resync_calls,
        "median_idle_poll_ms": round(statistics.median(poll_seconds) * 1000, 3),
        "full_resync_ms": round(resync_seconds * 1000, 3),
        OURS: {
            "requests_per_minute": round(
                polls_per_minute * per_poll + resyncs_per_minute * per_resync, 2
            ),
        },
        UPSTREAM: {
            # No cross-process watch at all, so nothing to pay and nothing delivered.
            "requests_per_minute": 0,
            "delivers_other_processes_changes": False,
        },
        "full_listing_poller_requests_per_minute": round(
            polls_per_minute * math.ceil(entries / 1000), 2
        ),
    }


def main() -> dict[str, Any]:
    with moto_process() as endpoint:
        figures: dict[str, Any] = {
            "setup": {
                "s3": "one moto server (python -m moto.server) in its own process",
                "latency": (
                    "wall clock from the writer process's acknowledged write() to the "
                    "watch callback in this process; same host, same clock"
                ),
                "watch_poll_interval_s": WATCH_POLL_INTERVAL,
                "write_gap_s": list(WRITE_GAP),
                "delivery_wait_s": DELIVERY_WAIT,
                "polling_cost": (
                    f"{POLLS_MEASURED} idle poll_journal() calls and one scan_versions() "
                    "(the watch loop's two calls) counted with botocore hooks; per minute = "
                    f"60/{DEFAULT_POLL_INTERVAL:g} polls + 60/{DEFAULT_RESYNC_INTERVAL:g} "
                    "resyncs (the defaults: 5 s poll, 5 min resync)"
                ),
                "full_listing_poller": (
                    "for contrast: a poller that lists every object each 5 s poll, "
                    "ceil(entries/1000) LISTs and no GETs, the least any cross-process "
                    "watch on the upstream layout (which has no journal) would cost"
                ),
            },
            "propagation": {OURS: propagate(endpoint, OURS),
                            UPSTREAM: propagate(endpoint, UPSTREAM)},
            "polling_cost": {str(n): polling_cost(endpoint, n) for n in ENTRY_COUNTS},
        }
    write_result("propagation", figures, COMMAND)
    print_summary(figures)
    return figures


def print_summary(figures: dict[str, Any]) -> None:
    for side, result in figures["propagation"].items():
        print(f"{side:>9}: {result['delivered']}/{result['writes']} delivered, "
              f"median {result.get('median_s')} s, p95 {result.get('p95_s')} s")
    for n, cost in figures["polling_cost"].items():
        print(f"{n:>9} entries: {cost['requests_per_idle_poll']} req/poll, "
              f"{cost['requests_per_full_resync']} req/resync, "
              f"{cost[OURS]['requests_per_minute']} req/min")


def cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench.propagation")
    sub = parser.add_subparsers(dest="command")
    writer = sub.add_parser("writer", help="internal: the writing process")
    writer.add_argument("--adapter", choices=[OURS], required=True)
    writer.add_argument("--endpoint", required=True)
    writer.add_argument("--bucket", required=True)
    writer.add_argument("--count", type=int, default=WRITES)
    writer.add_argument("--seed", type=int, default=6)
    args = parser.parse_args(argv)
    if args.command == "writer":
        run_writer(args.adapter, args.endpoint, args.bucket, args.count, args.seed)
    else:
        main()


if __name__ == "__main__":
    cli(sys.argv[1:])
