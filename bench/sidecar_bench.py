"""The sidecar as an agent sees it: latency and throughput over the Unix socket.

1. Cached reads: reads of entries the sidecar holds in its index and cache, from
   an aiohttp client over the socket: requests/s at a given concurrency, and
   p50/p99 latency one request at a time.
2. Writes: POST /api/v1/entries through the sidecar into the moto server
   (each write = LIST + conditional PUT + journal PUT), writes/s.
3. Memory: RSS of an idle sidecar that indexed 10,000 entries at start-up
   (index only, values not cached), beside an empty one; and after every value
   has been read once (all 10,000 in the cache).

moto and the sidecar each run in their own process, as in a pod, so neither
charges its CPU to the other or to the client.

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
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import boto3
from botocore.config import Config

from bench.common import free_port, new_bucket, write_result

COMMAND = ".venv/bin/python -m bench.sidecar_bench"
REPO = Path(__file__).resolve().parent.parent

READ_KEYS = 100
READ_REQUESTS = 20_000
READ_CONCURRENCY = 16
LATENCY_REQUESTS = 5_000
WRITES = 400
WRITE_CONCURRENCY = 8
INDEXED_ENTRIES = 10_000
IDLE_SECONDS = 5.0


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextmanager
def moto_process() -> Iterator[str]:
    for name, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(name, value)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait(lambda: _get(f"{endpoint}/moto-api/") is not None, "moto server")
        yield endpoint
    finally:
        server.terminate()
        server.wait(10)


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bytes(response.read())
    except OSError:
        return None


def wait(predicate: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


class SidecarProcess:
    """``python -m amfs_sidecar`` on a socket in a private directory."""

    def __init__(self, endpoint: str, bucket: str, directory: Path, name: str) -> None:
        self.socket = directory / f"{name}.sock"
        metrics_port = free_port()
        self.metrics = f"http://127.0.0.1:{metrics_port}"
        env = {**os.environ, "AMFS_S3_BUCKET": bucket, "AMFS_S3_ENDPOINT": endpoint,
               "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_DEFAULT_REGION": "us-east-1",
               "PYTHONPATH": os.pathsep.join([str(REPO / "sidecar"),
                                              os.environ.get("PYTHONPATH", "")])}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "amfs_sidecar", "--socket", str(self.socket),
             "--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1",
             "--log-level", "WARNING"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait(lambda: _get(self.metrics + "/ready") is not None, "sidecar ready", 300)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS in /proc")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def session(socket_path: Path) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url="http://localhost",
        connector=aiohttp.UnixConnector(path=str(socket_path), limit=64),
    )


def body(entity: str, key: str, value: Any) -> dict[str, Any]:
    return {"entity_path": entity, "key": key, "value": value, "agent_id": "bench"}


async def measure_reads(socket_path: Path) -> dict[str, Any]:
    async with session(socket_path) as s:
        for i in range(READ_KEYS):
            async with s.post("/api/v1/entries",
                              json=body("bench/reads", f"k{i}", {"n": i, "pad": "x" * 200})) as r:
                assert r.status == 201
        paths = [f"/api/v1/entries/bench/reads/k{i}" for i in range(READ_KEYS)]

        async def read(i: int) -> None:
            async with s.get(paths[i % READ_KEYS]) as response:
                await response.read()
                assert response.status == 200

        for i in range(500):  # warm-up: connections, caches
            await read(i)

        # Latency: one request at a time.
        latencies: list[float] = []
        for i in range(LATENCY_REQUESTS):
            start = time.perf_counter()
            await read(i)
            latencies.append(time.perf_counter() - start)

        # Throughput: READ_CONCURRENCY requests in flight.
        counter = iter(range(READ_REQUESTS))

        async def worker() -> None:
            for i in counter:
                await read(i)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(READ_CONCURRENCY)))
        elapsed = time.perf_counter() - start

        async with s.get("/api/v1/stats") as response:
            stats = await response.json()
    return {
        "reads_per_second": round(READ_REQUESTS / elapsed),
        "concurrency": READ_CONCURRENCY,
        "requests": READ_REQUESTS,
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 3),
        "latency_requests": LATENCY_REQUESTS,
        "cache_hit_ratio": round(stats["cache"]["hits"] /
                                 max(1, stats["cache"]["hits"] + stats["cache"]["misses"]), 4),
        "value_bytes": len(json.dumps({"n": 0, "pad": "x" * 200})),
    }


async def measure_writes(socket_path: Path) -> dict[str, Any]:
    async with session(socket_path) as s:
        async def write(i: int) -> float:
            start = time.perf_counter()
            async with s.post("/api/v1/entries",
                              json=body("bench/writes", f"k{i % 50}", {"n": i})) as response:
                await response.read()
                assert response.status == 201, response.status
            return time.perf_counter() - start

        for i in range(20):
            await write(i)
        sequential = [await write(i) for i in range(WRITES // 4)]

        counter = iter(range(WRITES))
        latencies: list[float] = []

        async def worker() -> None:
            for i in counter:
                latencies.append(await write(i))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(WRITE_CONCURRENCY)))
        elapsed = time.perf_counter() - start
    return {
        "writes_per_second": round(WRITES / elapsed, 1),
        "concurrency": WRITE_CONCURRENCY,
        "writes": WRITES,
        "keys": 50,
        "sequential_writes_per_second": round(len(sequential) / sum(sequential), 1),
        "sequential_p50_ms": round(percentile(sequential, 0.5) * 1000, 2),
        "sequential_p99_ms": round(percentile(sequential, 0.99) * 1000, 2),
        "s3_requests_per_write": "1 LIST + 1 conditional PUT + 1 journal PUT",
    }


def seed_entries(endpoint: str, bucket: str, count: int) -> None:
    """*count* version objects written straight to S3, as other pods would have."""
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

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, range(count)))


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


def measure_memory(endpoint: str, directory: Path) -> dict[str, Any]:
    empty = SidecarProcess(endpoint, new_bucket(endpoint), directory, "empty")
    try:
        time.sleep(IDLE_SECONDS)  # idle means idle: only the journal poll runs
        empty_rss = empty.rss_kib()
    finally:
        empty.stop()

    bucket = new_bucket(endpoint)
    started = time.perf_counter()
    seed_entries(endpoint, bucket, INDEXED_ENTRIES)
    seed_seconds = time.perf_counter() - started
    started = time.perf_counter()
    full = SidecarProcess(endpoint, bucket, directory, "full")
    ready_seconds = time.perf_counter() - started
    try:
        indexed = asyncio.run(entry_count(full.socket))
        assert indexed == INDEXED_ENTRIES, indexed
        time.sleep(IDLE_SECONDS)
        indexed_rss = full.rss_kib()
        listed = asyncio.run(read_all(full.socket))
        assert listed == INDEXED_ENTRIES, listed
        time.sleep(IDLE_SECONDS)
        cached_rss = full.rss_kib()
    finally:
        full.stop()
    return {
        "entries_indexed": INDEXED_ENTRIES,
        "rss_idle_empty_mib": round(empty_rss / 1024, 1),
        "rss_idle_10k_indexed_mib": round(indexed_rss / 1024, 1),
        "rss_10k_indexed_and_cached_mib": round(cached_rss / 1024, 1),
        "startup_to_ready_with_10k_seconds": round(ready_seconds, 2),
        "seed_seconds": round(seed_seconds, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="amfs-bench-", dir="/tmp"))
    try:
        with moto_process() as endpoint:
            sidecar = SidecarProcess(endpoint, new_bucket(endpoint), directory, "bench")
            try:
                reads = asyncio.run(measure_reads(sidecar.socket))
                print("cached reads:", reads, flush=True)
                writes = asyncio.run(measure_writes(sidecar.socket))
                print("writes:", writes, flush=True)
            finally:
                sidecar.stop()
            memory = measure_memory(endpoint, directory)
            print("memory:", memory, flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    path = write_result("sidecar", {
        "cached_reads": reads, "writes": writes, "memory": memory,
        "client": f"aiohttp {aiohttp.__version__} UnixConnector, one process",
        "s3": "moto server in its own process on 127.0.0.1",
    }, COMMAND)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
