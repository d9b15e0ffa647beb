"""The sidecar's memory by the size of the memory it serves: what its container limit
must hold.

    .venv/bin/python -m bench.sidecar_memory [--sizes 10000,100000,1000000]

For each size, on a fresh bucket of one moto server (its own process):

* **cold start**: an index snapshot of N names is PUT where the lease holder writes
  it (``encode_snapshot``, nothing under ``entries/``), then ``python -m amfs_sidecar``
  starts on it. Once ``/ready`` answers and ``/api/v1/stats`` counts the N entries, its
  resident memory (``VmRSS``) and its peak so far (``VmHWM``, reading the snapshot
  included) are read from ``/proc``. Its resync interval is set past the run, so no
  rolling scan runs (``entries/`` is empty: a whole pass would forget every name).
* **the lease holder's snapshot**: in a child process an ``EntryIndex`` adopts the
  same N names as a cold start does, and the holder's own code builds and encodes the
  snapshot (``Synchronizer._snapshot_builder``, ``encode_snapshot``), as every resync
  interval does; ``VmRSS`` before and ``VmHWM`` after, the time the holder's event loop
  is held (copying what the build needs) and the build's and the encoding's, which run
  in a worker thread.

Names are ``agents/team-NNN/memory`` (1,000 entities) with keys ``fact-NNNNNNN``.
Memory figures are exact for this build on CPython 3.11; times move with the load.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3

from amfs_s3 import S3Adapter
from amfs_s3.config import S3Settings
from amfs_s3.layout import Layout
from amfs_s3.snapshot import IndexSnapshot, decode_snapshot, encode_snapshot, snapshot_key
from amfs_sidecar.index import EntryIndex, ValueCache
from amfs_sidecar.metrics import SidecarMetrics
from amfs_sidecar.stream import StreamHub
from amfs_sidecar.sync import Synchronizer
from bench.common import moto_process, new_bucket, proc_status, write_result
from bench.sidecar_bench import SidecarProcess

COMMAND = ".venv/bin/python -m bench.sidecar_memory"
SIZES = (10_000, 100_000, 1_000_000)
ENTITIES = 1_000
NAMESPACE = "default"
PREFIX = "amfs/"
MiB = 1024 * 1024
# The limit the operator gives an injected sidecar unless the memory sets one.
DEFAULT_LIMIT_MIB = 256


def names(size: int) -> dict[tuple[str, str], tuple[int, int]]:
    """N names, each at version 1 to 3 (as many versions)."""
    return {(f"agents/team-{n % ENTITIES:03d}/memory", f"fact-{n:07d}"): (1 + n % 3, 1 + n % 3)
            for n in range(size)}


def mib(kib: int) -> float:
    return round(kib / 1024, 1)


def put_snapshot(endpoint: str, bucket: str, size: int) -> int:
    """The snapshot a lease holder would have written for *size* names; its bytes."""
    covers_ms = int(time.time() * 1000) - 1000
    body = encode_snapshot(IndexSnapshot(covers_ms=covers_ms, writer="bench",
                                         entries=names(size), outcomes=0))
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.put_object(Bucket=bucket, Key=snapshot_key(Layout(PREFIX, NAMESPACE), covers_ms),
                      Body=body)
    return len(body)


def metric_entries(metrics_url: str) -> int:
    """The sidecar's own count of entries (``/metrics``; ``/api/v1/stats`` would read
    every entry)."""
    with urllib.request.urlopen(metrics_url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith("amfs_sidecar_objects{") and 'kind="entries"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    raise RuntimeError("no amfs_sidecar_objects{kind=\"entries\"} series")


def cold_start(endpoint: str, size: int, directory: Path) -> dict[str, Any]:
    bucket = new_bucket(endpoint)
    snapshot_bytes = put_snapshot(endpoint, bucket, size)
    sidecar = SidecarProcess(endpoint, bucket, directory, f"mem{size}",
                             extra_args=["--resync-interval", "86400"])
    try:
        counted = metric_entries(sidecar.metrics)
        if counted != size:
            raise RuntimeError(f"the sidecar counts {counted} entries, the snapshot holds {size}")
        status = proc_status(sidecar.process.pid)
        return {"snapshot_bytes": snapshot_bytes, "start_to_ready_seconds":
                round(sidecar.started, 2), "rss_ready_mib": mib(status["VmRSS"]),
                "peak_rss_mib": mib(status["VmHWM"])}
    finally:
        sidecar.stop()


def holder_child(size: int) -> dict[str, Any]:
    """Run in a child process: the holder's snapshot build and encoding at *size*."""
    index = EntryIndex()
    # As a cold start fills it: from a decoded snapshot.
    read = decode_snapshot("bench", encode_snapshot(IndexSnapshot(
        covers_ms=0, writer="bench", entries=names(size), outcomes=0)))
    index.adopt(read.entries, since=index.mark(), report=False)
    del read
    adapter = S3Adapter.from_settings(S3Settings(bucket="bench-unused",
                                                 endpoint_url="http://127.0.0.1:9"))
    gc.collect()
    before = proc_status()  # the sidecar holds its index and its S3 client already

    async def offload(fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    sync = Synchronizer(adapter, index, ValueCache(0), StreamHub(), SidecarMetrics(), offload,
                        poll_interval=5.0, resync_interval=300.0)
    started = time.perf_counter()
    build = sync._snapshot_builder(covers_ms=int(time.time() * 1000))  # on the event loop
    on_loop = time.perf_counter() - started
    started = time.perf_counter()
    snapshot = build()  # this and the encoding: in a worker thread
    building = time.perf_counter() - started
    started = time.perf_counter()
    body = encode_snapshot(snapshot)
    encoding = time.perf_counter() - started
    after = proc_status()
    adapter.close()
    return {"entries_in_snapshot": len(decode_snapshot("written", body).entries),
            "rss_index_mib": mib(before["VmRSS"]),
            "peak_rss_writing_snapshot_mib": mib(after["VmHWM"]),
            "added_writing_snapshot_mib": mib(after["VmHWM"] - before["VmRSS"]),
            "loop_held_building_snapshot_seconds": round(on_loop, 3),
            "build_seconds": round(building, 2), "encode_seconds": round(encoding, 2),
            "snapshot_bytes": len(body)}


def holder(size: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.sidecar_memory", "--holder-child",
                          str(size)], check=True, capture_output=True, text=True, timeout=900)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    parser.add_argument("--holder-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.holder_child:
        print(json.dumps(holder_child(args.holder_child)))
        return {}
    sizes = [int(s) for s in args.sizes.split(",")]
    figures: dict[str, Any] = {"entities": ENTITIES, "default_limit_mib": DEFAULT_LIMIT_MIB,
                               "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="amfs-mem-") as tmp, moto_process() as endpoint:
        for size in sizes:
            row = {"cold_start": cold_start(endpoint, size, Path(tmp)), "lease_holder":
                   holder(size)}
            figures["sizes"][str(size)] = row
            print(f"{size:>9,} entries: {json.dumps(row)}", flush=True)
    figures["bytes_per_entry"] = per_entry(figures["sizes"])
    path = write_result("sidecar_memory", figures, COMMAND + (f" --sizes {args.sizes}"
                                                              if argv else ""))
    print(f"wrote {path}")
    return figures


def per_entry(rows: dict[str, Any]) -> dict[str, float]:
    """Bytes of RSS per entry between the smallest and the largest size measured."""
    small, large = min(rows, key=int), max(rows, key=int)
    if small == large:
        return {}
    span = (int(large) - int(small))

    def slope(pick: Any) -> float:
        return round((pick(rows[large]) - pick(rows[small])) * MiB / span)

    return {"ready": slope(lambda r: r["cold_start"]["rss_ready_mib"]),
            "cold_start_peak": slope(lambda r: r["cold_start"]["peak_rss_mib"]),
            "lease_holder_added": slope(
                lambda r: r["lease_holder"]["added_writing_snapshot_mib"])}


if __name__ == "__main__":
    main()
