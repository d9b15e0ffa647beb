"""A stream resumed from far back: time and S3 requests to its first event, and the
memory the replay holds, for a backlog of journaled writes.

    .venv/bin/python -m bench.stream_replay [--writes 1000 3000]

The writes go straight to S3 (a version object and a journal record each, as
another pod would write them); a sidecar that never saw them resumes a stream
from before the first, so the whole backlog comes from the journal replay.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import boto3

from amfs_s3.config import S3Settings
from amfs_s3.journal import Change
from amfs_s3.layout import Layout
from amfs_sidecar.event_ids import journal_position
from bench.common import RequestCounter, moto_process, new_bucket, write_result
from tests.fixtures.sidecar import sidecar_config, start_sidecar

COMMAND = ".venv/bin/python -m bench.stream_replay"


def write_backlog(client: Any, bucket: str, count: int, start_ms: int) -> None:
    layout = Layout()

    def put(n: int) -> None:
        key = f"k{n:05d}"
        entry = {"entity_path": "bulk", "key": key, "version": 1,
                 "value": {"n": n, "pad": "x" * 200},
                 "provenance": {"agent_id": "bulk", "session_id": "s",
                                "written_at": "2026-01-01T00:00:00Z"}}
        client.put_object(Bucket=bucket, Key=layout.version_key("bulk", key, 1),
                          Body=json.dumps(entry).encode())
        journal_key = layout.journal_key(start_ms + n, "bulk-writer", n)
        change = Change(journal_key, "write", start_ms + n, "bulk-writer", entity_path="bulk",
                        key=key, version=1)
        client.put_object(Bucket=bucket, Key=journal_key,
                          Body=json.dumps(change.to_record()).encode())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(count)))


async def resume(socket_path: Path, last_event_id: str, count: int,
                 counter: RequestCounter) -> dict[str, Any]:
    connector = aiohttp.UnixConnector(path=str(socket_path))
    async with aiohttp.ClientSession(base_url="http://localhost", connector=connector) as s:
        counter.take()
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        started = time.perf_counter()
        first: dict[str, Any] = {}
        events = 0
        async with s.get("/api/v1/stream", params={"entity_path": "bulk"},
                         headers={"Last-Event-ID": last_event_id}) as response:
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                events += 1
                if events == 1:
                    first = {"seconds": round(time.perf_counter() - started, 3),
                             "s3_requests": counter.take()}
                if events == count:
                    break
        total = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    return {"first_event": first, "events": events, "seconds_to_last": round(total, 2),
            "replay_peak_traced_mib": round((peak - base) / 2**20, 2),
            "s3_requests_after_first": counter.take()}


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--writes", type=int, nargs="+", default=[1000, 3000])
    args = parser.parse_args()
    # A backlog three times larger must not cost a larger first step or more memory.
    figures = {str(count): measure(count) for count in args.writes}
    write_result("stream_replay", figures, COMMAND)
    print(json.dumps(figures, indent=2))
    return figures


def measure(writes: int) -> dict[str, Any]:
    socket_dir = Path(tempfile.mkdtemp(prefix="amfs-bench-", dir="/tmp"))
    with moto_process() as endpoint:
        bucket = new_bucket(endpoint)
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        start_ms = int(time.time() * 1000)
        write_backlog(client, bucket, writes, start_ms)
        settings = S3Settings(bucket=bucket, endpoint_url=endpoint, region_name="us-east-1",
                              poll_interval=1.0, resync_interval=3600.0)
        # A short look-back: the sidecar's own poller leaves the backlog to the replay.
        running = start_sidecar(sidecar_config(settings, socket_dir / "s.sock", lookback_ms=100))
        try:
            running.wait_ready()
            counter = RequestCounter()
            assert running.sidecar.adapter is not None
            counter.attach(running.sidecar.adapter.client)
            tracemalloc.start()
            figures = asyncio.run(resume(running.socket_path,
                                         str(journal_position(start_ms - 1000)),
                                         writes, counter))
            tracemalloc.stop()
        finally:
            running.stop()
            shutil.rmtree(socket_dir, ignore_errors=True)
    return figures


if __name__ == "__main__":
    main()
