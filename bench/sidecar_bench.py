"""The sidecar as an agent sees it: latency, throughput, fan-out, memory, start-up.

1. Cached reads over the Unix socket from aiohttp clients (each client its own
   session and connection) at 1, 8 and 64 concurrent clients: requests/s and
   p50/p99/p99.9 latency; median of several rounds.
2. Writes: POST /api/v1/entries through the sidecar into moto (each write =
   LIST + conditional PUT + journal PUT): writes/s at 8 clients, and the
   latency of one write at a time; median of several rounds.
3. SSE fan-out: 100 streams open, then one write at a time; the time from
   sending the write until the last of the 100 streams has its event.
4. Memory: RSS of an idle sidecar on an empty bucket, with 10,000 and with
   100,000 entries indexed (index only), and with 10,000 also cached.
5. Start-up: from process start to ``/ready`` with 10,000 entries in the bucket.

The bucket is seeded with version objects written straight to S3 in the
DESIGN layout by a boto3 thread pool, as other pods would have left them. moto
and the sidecar each run in their own process, as in a pod; the clients share
one process (this one).

    .venv/bin/python -m bench.sidecar_bench
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import boto3
from botocore.config import Config

from bench.common import free_port, moto_process, new_bucket, proc_status, write_result

COMMAND = ".venv/bin/python -m bench.sidecar_bench"
REPO = Path(__file__).resolve().parent.parent

ROUNDS = 3
READ_KEYS = 100
READ_WARMUP = 1_000
READ_REQUESTS = {1: 5_000, 8: 20_000, 64: 20_000}  # per round, by concurrent clients
WRITES = 400
WRITE_CONCURRENCY = 8
WRITE_KEYS = 50
SUBSCRIBERS = 100
FANOUT_WRITES = 25
ENTRY_COUNTS = (10_000, 100_000)
STARTS = 3
IDLE_SECONDS = 5.0  # after ready: only the journal poll runs


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Figure by figure, the median over rounds (numbers only)."""
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}


def _get(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def wait(predicate: Callable[[], bool], what: str, timeout: float = 600.0,
         interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(interval)


class SidecarProcess:
    """``python -m amfs_sidecar`` on a socket in a private directory; ``started``
    is the time from spawning the process until ``/ready`` answered 200."""

    def __init__(self, endpoint: str, bucket: str, directory: Path, name: str,
                 extra_args: list[str] | None = None) -> None:
        self.socket = directory / f"{name}.sock"
        metrics_port = free_port()
        self.metrics = f"http://127.0.0.1:{metrics_port}"
        env = {**os.environ, "AMFS_S3_BUCKET": bucket, "AMFS_S3_ENDPOINT": endpoint,
               "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_DEFAULT_REGION": "us-east-1",
               "PYTHONPATH": os.pathsep.join([str(REPO / "sidecar"),
                                              os.environ.get("PYTHONPATH", "")])}
        spawned = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "amfs_sidecar", "--socket", str(self.socket),
             "--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1",
             "--log-level", "WARNING", *(extra_args or [])],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait(self._ready, "sidecar ready")
        except BaseException:
            self.stop()
            raise
        self.started = time.perf_counter() - spawned

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"sidecar exited with {self.process.returncode}")
        return _get(self.metrics + "/ready") == 200

    def rss_kib(self) -> int:
        return proc_status(self.process.pid)["VmRSS"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def session(socket_path: Path, connections: int = 1) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url="http://localhost",
        connector=aiohttp.UnixConnector(path=str(socket_path), limit=connections),
    )


def body(entity: str, key: str, value: Any) -> dict[str, Any]:
    return {"entity_path": entity, "key": key, "value": value, "agent_id": "bench"}


async def post(s: aiohttp.ClientSession, payload: dict[str, Any]) -> dict[str, Any]:
    async with s.post("/api/v1/entries", json=payload) as response:
        if response.status != 201:
            raise RuntimeError(f"write answered {response.status}: {await response.text()}")
        return dict(await response.json())


# ---- 1. cached reads ----------------------------------------------------------------------


async def read_round(socket_path: Path, clients: int, requests: int) -> dict[str, float]:
    """*clients* sessions, each reading its share one request at a time."""
    paths = [f"/api/v1/entries/bench/reads/k{i}" for i in range(READ_KEYS)]
    sessions = [session(socket_path) for _ in range(clients)]
    latencies: list[float] = []

    async def client(s: aiohttp.ClientSession, offset: int, count: int) -> None:
        for i in range(count):
            started = time.perf_counter()
            async with s.get(paths[(offset + i) % READ_KEYS]) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"read answered {response.status}")
            latencies.append(time.perf_counter() - started)

    try:
        # Warm-up: every connection open, every value in the cache.
        await asyncio.gather(*(client(s, n, READ_WARMUP // clients + 1)
                               for n, s in enumerate(sessions)))
        latencies.clear()
        share = requests // clients
        started = time.perf_counter()
        await asyncio.gather(*(client(s, n * 7, share) for n, s in enumerate(sessions)))
        elapsed = time.perf_counter() - started
    finally:
        await asyncio.gather(*(s.close() for s in sessions))
    return {
        "reads_per_second": round(len(latencies) / elapsed),
        "p50_ms": ms(percentile(latencies, 0.50)),
        "p99_ms": ms(percentile(latencies, 0.99)),
        "p99_9_ms": ms(percentile(latencies, 0.999)),
    }


async def measure_reads(socket_path: Path) -> dict[str, Any]:
    value = {"n": 0, "pad": "x" * 200}
    async with session(socket_path) as s:
        for i in range(READ_KEYS):
            await post(s, body("bench/reads", f"k{i}", {**value, "n": i}))
    figures: dict[str, Any] = {}
    for clients, requests in READ_REQUESTS.items():
        rounds = [await read_round(socket_path, clients, requests) for _ in range(ROUNDS)]
        figures[f"clients_{clients}"] = {**median_of(rounds), "requests_per_round": requests}
        print(f"  reads, {clients} clients: {figures[f'clients_{clients}']}", flush=True)
    async with session(socket_path) as s, s.get("/api/v1/stats") as response:
        stats = await response.json()
    cache = stats["cache"]
    figures["cache_hit_ratio"] = round(cache["hits"] / max(1, cache["hits"] + cache["misses"]), 4)
    figures["value_bytes"] = len(json.dumps(value))
    figures["rounds"] = ROUNDS
    return figures


# ---- 2. writes ----------------------------------------------------------------------------


async def write_round(socket_path: Path, base: int) -> dict[str, float]:
    async with session(socket_path, WRITE_CONCURRENCY) as s:
        async def write(i: int) -> float:
            started = time.perf_counter()
            await post(s, body("bench/writes", f"k{i % WRITE_KEYS}", {"n": i}))
            return time.perf_counter() - started

        sequential = [await write(base + i) for i in range(WRITES // 4)]
        counter = iter(range(base, base + WRITES))

        async def worker() -> None:
            for i in counter:
                await write(i)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(WRITE_CONCURRENCY)))
        elapsed = time.perf_counter() - started
    return {
        "writes_per_second": round(WRITES / elapsed, 1),
        "sequential_writes_per_second": round(len(sequential) / sum(sequential), 1),
        "sequential_p50_ms": ms(percentile(sequential, 0.5)),
        "sequential_p99_ms": ms(percentile(sequential, 0.99)),
    }


async def measure_writes(socket_path: Path) -> dict[str, Any]:
    async with session(socket_path) as s:
        for i in range(20):  # warm-up
            await post(s, body("bench/writes", f"k{i % WRITE_KEYS}", {"n": i}))
    rounds = [await write_round(socket_path, 1000 * (r + 1)) for r in range(ROUNDS)]
    return {
        **median_of(rounds),
        "concurrency": WRITE_CONCURRENCY,
        "writes_per_round": WRITES,
        "keys": WRITE_KEYS,
        "rounds": ROUNDS,
        "s3_requests_per_write": "1 LIST + 1 conditional PUT + 1 journal PUT",
    }


# ---- 3. SSE fan-out -----------------------------------------------------------------------


class Subscriber:
    """One open stream; notes when each (key, version) arrived."""

    def __init__(self) -> None:
        self.arrived: dict[tuple[str, int], float] = {}
        self.open = asyncio.Event()

    async def run(self, s: aiohttp.ClientSession) -> None:
        async with s.get("/api/v1/stream", params={"entity_path": "bench/fanout"},
                         timeout=aiohttp.ClientTimeout(total=None)) as response:
            async for raw in response.content:
                line = raw.rstrip(b"\r\n")
                if line.startswith(b": connected"):
                    self.open.set()
                elif line.startswith(b"data: "):
                    now = time.perf_counter()
                    data = json.loads(line[6:])
                    self.arrived[(data["key"], data["version"])] = now


async def measure_fanout(socket_path: Path) -> dict[str, Any]:
    subscribers = [Subscriber() for _ in range(SUBSCRIBERS)]
    sessions = [session(socket_path) for _ in range(SUBSCRIBERS)]
    tasks = [asyncio.create_task(sub.run(s)) for sub, s in zip(subscribers, sessions, strict=True)]
    all_reached: list[float] = []
    median_subscriber: list[float] = []
    acknowledged: list[float] = []
    try:
        await asyncio.wait_for(asyncio.gather(*(sub.open.wait() for sub in subscribers)), 60)
        async with session(socket_path) as writer:
            for i in range(-3, FANOUT_WRITES):  # three warm-up writes
                sent = time.perf_counter()
                entry = await post(writer, body("bench/fanout", f"k{i}", {"n": i}))
                acked = time.perf_counter()
                name = (entry["key"], entry["version"])
                deadline = time.monotonic() + 30
                while not all(name in sub.arrived for sub in subscribers):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"write {name} did not reach every stream")
                    await asyncio.sleep(0.001)
                if i < 0:
                    continue
                times = [sub.arrived[name] - sent for sub in subscribers]
                all_reached.append(max(times))
                median_subscriber.append(statistics.median(times))
                acknowledged.append(acked - sent)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(s.close() for s in sessions))
    return {
        "subscribers": SUBSCRIBERS,
        "writes": FANOUT_WRITES,
        "all_reached_median_ms": ms(statistics.median(all_reached)),
        "all_reached_p95_ms": ms(percentile(all_reached, 0.95)),
        "median_subscriber_median_ms": ms(statistics.median(median_subscriber)),
        "write_acknowledged_median_ms": ms(statistics.median(acknowledged)),
        "measured_from": "sending the POST; the sidecar publishes before it answers 201",
    }


# ---- 4 and 5. memory and start-up ---------------------------------------------------------


def seed_entries(endpoint: str, bucket: str, start: int, stop: int) -> float:
    """Version objects *start*..*stop*-1 written straight to S3, as other pods would
    have left them; returns the seconds it took."""
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          config=Config(max_pool_connections=32))
    written_at = datetime.now(UTC).isoformat()

    def put(i: int) -> None:
        entity, key = f"bench/idx/e{i // 100}", f"k{i % 100}"
        entry = {"entity_path": entity, "key": key, "version": 1,
                 "value": {"n": i, "text": "an entry of typical size " * 4},
                 "provenance": {"agent_id": "bench", "session_id": "s",
                                "written_at": written_at}}
        client.put_object(Bucket=bucket, Key=f"amfs/default/entries/{entity}/{key}/v1.json",
                          Body=json.dumps(entry).encode())

    started = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, range(start, stop)))
    return time.perf_counter() - started


def bare_listing_seconds(endpoint: str, bucket: str) -> float:
    """One paginated boto3 LIST of entries/: what the first sync's scan costs S3
    alone, so the start-up figure can be read against the emulator's share."""
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    started = time.perf_counter()
    for _ in client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix="amfs/default/entries/"):
        pass
    return time.perf_counter() - started


async def read_all(socket_path: Path) -> int:
    async with session(socket_path) as s:
        cursor, total = None, 0
        while True:
            params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
            async with s.get("/api/v1/entries", params=params) as response:
                page = await response.json()
            total += len(page["entries"])
            cursor = page["next_cursor"]
            if not cursor:
                return total


async def entry_count(socket_path: Path) -> int:
    async with session(socket_path) as s, s.get("/api/v1/stats") as response:
        return int((await response.json())["entries"])


def idle_rss_mib(sidecar: SidecarProcess) -> float:
    time.sleep(IDLE_SECONDS)  # a benchmark, not a test: idle means idle for a while
    return round(sidecar.rss_kib() / 1024, 1)


def measure_memory_and_startup(endpoint: str, directory: Path) -> dict[str, Any]:
    memory: dict[str, Any] = {}
    startup: dict[str, Any] = {}
    seeding: dict[str, Any] = {}

    empty = SidecarProcess(endpoint, new_bucket(endpoint), directory, "empty")
    try:
        memory["rss_idle_empty_mib"] = idle_rss_mib(empty)
        startup["to_ready_empty_s"] = round(empty.started, 2)
    finally:
        empty.stop()

    bucket = new_bucket(endpoint)
    seeded = 0
    for count in ENTRY_COUNTS:
        seeding[f"seed_to_{count}_s"] = round(seed_entries(endpoint, bucket, seeded, count), 1)
        seeded = count
        listing = bare_listing_seconds(endpoint, bucket)
        startup[f"s3_list_all_{count // 1000}k_s"] = round(listing, 2)
        print(f"  seeded {count} entries", flush=True)
        starts: list[float] = []
        for n in range(STARTS if count == ENTRY_COUNTS[0] else 1):
            sidecar = SidecarProcess(endpoint, bucket, directory, f"indexed-{count}-{n}")
            starts.append(sidecar.started)
            try:
                indexed = asyncio.run(entry_count(sidecar.socket))
                if indexed != count:
                    raise RuntimeError(f"indexed {indexed} entries, expected {count}")
                if n == 0:
                    memory[f"rss_idle_{count // 1000}k_indexed_mib"] = idle_rss_mib(sidecar)
                    if count == ENTRY_COUNTS[0]:
                        listed = asyncio.run(read_all(sidecar.socket))
                        if listed != count:
                            raise RuntimeError(f"listed {listed} entries, expected {count}")
                        memory[f"rss_{count // 1000}k_indexed_and_cached_mib"] = idle_rss_mib(
                            sidecar)
            finally:
                sidecar.stop()
        key = f"to_ready_{count // 1000}k"
        if len(starts) > 1:
            startup[f"{key}_median_s"] = round(statistics.median(starts), 2)
            startup[f"{key}_runs_s"] = [round(s, 2) for s in starts]
        else:
            startup[f"{key}_s"] = round(starts[0], 2)
        print(f"  {count} entries: {memory} {startup}", flush=True)
    startup["measured_from"] = ("spawning python -m amfs_sidecar (interpreter start "
                                "included) until /ready answers 200, polled every 20 ms; "
                                "s3_list_all_* is one bare boto3 listing of the same objects "
                                "(moto sorts the whole bucket for every 1,000-key page)")
    return {"memory": memory, "startup": startup, "seeding": seeding}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="amfs-bench-", dir="/tmp"))
    try:
        with moto_process() as endpoint:
            sidecar = SidecarProcess(endpoint, new_bucket(endpoint), directory, "bench")
            try:
                reads = asyncio.run(measure_reads(sidecar.socket))
                writes = asyncio.run(measure_writes(sidecar.socket))
                print("writes:", writes, flush=True)
                fanout = asyncio.run(measure_fanout(sidecar.socket))
                print("fan-out:", fanout, flush=True)
            finally:
                sidecar.stop()
            sized = measure_memory_and_startup(endpoint, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    path = write_result("sidecar", {
        "cached_reads": reads, "writes": writes, "sse_fanout": fanout, **sized,
        "setup": {
            "client": f"aiohttp {aiohttp.__version__} over the Unix socket, each client its "
                      "own session and connection, all in one process",
            "s3": "moto server (python -m moto.server) in its own process on 127.0.0.1",
            "sidecar": "python -m amfs_sidecar in its own process, default settings",
            "timing": f"median over {ROUNDS} rounds after warm-up, time.perf_counter()",
            "entries": "seeded as v1 objects in the DESIGN layout, 100 keys per entity, "
                       "~230-byte values",
        },
    }, COMMAND)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
