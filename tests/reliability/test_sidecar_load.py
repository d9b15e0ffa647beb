"""64 concurrent clients against one sidecar process for a bounded time.

Clients mix cached reads, pinned-version reads, listings and writes over the
Unix socket while some of them hold watch streams. Afterwards: no request
failed (no 5xx, no dropped connection), every acknowledged write is readable at
its version and stored in S3, versions are contiguous, every stream saw every
write exactly once and in order per key, and the sidecar's resident memory grew
by no more than a stated bound. The sidecar runs as its own process so its
RSS is its own.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from amfs_s3.config import S3Settings
from tests.fixtures.s3 import all_keys
from tests.fixtures.sidecar import SidecarProcess, await_until, spawn_sidecar
from tests.integration.sidecar.sse import EventReader

CLIENTS = 64
WATCHERS = 8  # of the clients, these hold a stream for the whole run
KEYS = 16
LOAD_SECONDS = 12.0
# Values are small and the cache is bounded, so the sidecar should not grow much
# beyond connection buffers and allocator slack under this load.
RSS_GROWTH_BOUND_KIB = 48 * 1024
ENTITY = "load/mix"


@dataclass
class Tally:
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    acknowledged: dict[tuple[str, int], Any] = field(default_factory=dict)  # (key, version)

    def note(self, what: str, status: int) -> None:
        self.statuses[(what, status)] += 1


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def connect(socket_path: Path) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url="http://localhost", timeout=aiohttp.ClientTimeout(total=30),
        connector=aiohttp.UnixConnector(path=str(socket_path)),
    )


def write_body(key: str, value: Any) -> dict[str, Any]:
    return {"entity_path": ENTITY, "key": key, "value": value, "agent_id": "load"}


async def one_request(s: aiohttp.ClientSession, tally: Tally, rng: random.Random,
                      client: int, seq: int) -> None:
    key = f"k{rng.randrange(KEYS)}"
    roll = rng.random()
    if roll < 0.25:
        value = {"client": client, "seq": seq}
        async with s.post("/api/v1/entries", json=write_body(key, value)) as response:
            body = await response.json()
            tally.note("write", response.status)
            if response.status == 201:
                tally.acknowledged[(key, body["version"])] = value
    elif roll < 0.80:
        async with s.get(f"/api/v1/entries/{ENTITY}/{key}") as response:
            await response.read()
            tally.note("read", response.status)
    elif roll < 0.90:
        known = [v for k, v in list(tally.acknowledged) if k == key] or [1]
        version = rng.choice(known)
        async with s.get(f"/api/v1/entries/{ENTITY}/{key}",
                         params={"version": str(version)}) as response:
            await response.read()
            tally.note("read version", response.status)
    else:
        async with s.get("/api/v1/entries",
                         params={"entity_path": ENTITY, "limit": "10"}) as response:
            await response.read()
            tally.note("list", response.status)


async def run_client(socket_path: Path, tally: Tally, client: int, stop_at: float) -> None:
    rng = random.Random(client)
    seq = 0
    async with connect(socket_path) as s:
        while time.monotonic() < stop_at:
            seq += 1
            try:
                await one_request(s, tally, rng, client, seq)
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.errors.append(f"client {client}: {type(exc).__name__}: {exc}")


class Watcher:
    """A stream open for the whole run; records (key, version, id) as they arrive."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, str]] = []
        self.connected = asyncio.Event()

    async def run(self, socket_path: Path, tally: Tally) -> None:
        try:
            async with connect(socket_path) as s, s.get(
                "/api/v1/stream", params={"entity_path": ENTITY},
                timeout=aiohttp.ClientTimeout(total=None, sock_read=30),
            ) as response:
                tally.note("stream", response.status)
                events = EventReader(response)
                await events.comment("connected")
                self.connected.set()
                while True:
                    event = await events.next(timeout=30)
                    self.seen.append((event.data["key"], event.data["version"], event.id or ""))
        except (aiohttp.ClientError, EOFError, TimeoutError) as exc:
            tally.errors.append(f"watcher: {type(exc).__name__}: {exc}")


async def seed(socket_path: Path, tally: Tally) -> None:
    async with connect(socket_path) as s:
        for n in range(KEYS):
            async with s.post("/api/v1/entries", json=write_body(f"k{n}", {"seed": n})) as r:
                assert r.status == 201
                tally.acknowledged[(f"k{n}", (await r.json())["version"])] = {"seed": n}


async def warm_up(socket_path: Path) -> None:
    """Every kind of request once per client slot: pools and lazy paths exist before
    the memory baseline is taken, so the comparison measures the load itself."""
    throwaway = Tally()
    await asyncio.gather(*(run_client(socket_path, throwaway, 1000 + n, time.monotonic() + 1.0)
                           for n in range(CLIENTS)))
    assert throwaway.errors == [], throwaway.errors[:5]
    assert throwaway.acknowledged, "the warm-up wrote nothing"


async def stored_history(socket_path: Path, key: str) -> list[dict[str, Any]]:
    async with connect(socket_path) as s, s.get(f"/api/v1/history/{ENTITY}/{key}") as response:
        assert response.status == 200
        return list((await response.json())["versions"])


async def test_64_clients_mixing_reads_writes_and_streams_lose_nothing(
    s3_settings: S3Settings, s3_client: Any, socket_dir: Path,
    sidecar_processes: list[SidecarProcess],
) -> None:
    sidecar = spawn_sidecar(s3_settings, socket_dir / "load.sock", "--log-level", "WARNING")
    sidecar_processes.append(sidecar)
    socket_path = sidecar.socket_path
    tally = Tally()
    await seed(socket_path, tally)
    await warm_up(socket_path)
    # The warm-up's writes count too: they are acknowledged writes on the same keys.
    for key in range(KEYS):
        for entry in await stored_history(socket_path, f"k{key}"):
            tally.acknowledged.setdefault((entry["key"], entry["version"]), entry["value"])
    rss_before = rss_kib(sidecar.process.pid)

    watchers = [Watcher() for _ in range(WATCHERS)]
    streams = [asyncio.create_task(w.run(socket_path, tally)) for w in watchers]
    await asyncio.wait_for(asyncio.gather(*(w.connected.wait() for w in watchers)), 15)
    already = dict(tally.acknowledged)
    stop_at = time.monotonic() + LOAD_SECONDS
    await asyncio.gather(*(run_client(socket_path, tally, n, stop_at)
                           for n in range(CLIENTS - WATCHERS)))
    during = {name: v for name, v in tally.acknowledged.items() if name not in already}
    try:
        # By content, not count: a duplicate must not end the wait before a write came.
        await await_until(
            lambda: all({(k, v) for k, v, _ in w.seen} >= set(during) for w in watchers),
            timeout=30, message="every write to reach every stream")
    finally:
        for task in streams:
            task.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
    rss_after = rss_kib(sidecar.process.pid)

    # No errors: every request answered, none with a 5xx.
    assert tally.errors == [], tally.errors[:10]
    assert all(status < 500 for _, status in tally.statuses), tally.statuses
    assert {status for (what, status) in tally.statuses if what == "write"} == {201}
    assert {status for (what, status) in tally.statuses if what != "write"} == {200}
    writes = sum(n for (what, _), n in tally.statuses.items() if what == "write")
    assert len(during) == writes > 100, (len(during), writes)

    # No lost writes: per key, versions 1..N, every one acknowledged with its value,
    # readable through the API and stored in S3.
    prefix = f"{s3_settings.prefix}default/entries/{ENTITY}/"
    stored = set(all_keys(s3_client, s3_settings.bucket, prefix))
    for n in range(KEYS):
        key = f"k{n}"
        history = await stored_history(socket_path, key)
        versions = [e["version"] for e in history]
        assert versions == list(range(1, len(versions) + 1)), (key, versions)
        assert {v: tally.acknowledged[(key, v)] for v in versions} == {
            e["version"]: e["value"] for e in history}
        assert {(k, v) for k, v in tally.acknowledged if k == key} == {(key, v) for v in versions}
        assert {f"{prefix}{key}/v{v}.json" for v in versions} <= stored

    # Every stream saw every write made while it watched, once, in order per key.
    for watcher in watchers:
        assert len({event_id for _, _, event_id in watcher.seen}) == len(watcher.seen)
        assert {(k, v) for k, v, _ in watcher.seen} == set(during)
        assert len(watcher.seen) == len(during)  # once each, duplicates in order included
        for n in range(KEYS):
            versions = [v for k, v, _ in watcher.seen if k == f"k{n}"]
            assert versions == sorted(versions), (f"k{n}", versions)

    # Memory stayed bounded.
    assert rss_after - rss_before <= RSS_GROWTH_BOUND_KIB, (
        f"RSS grew from {rss_before} KiB to {rss_after} KiB under load")
    assert sidecar.terminate() == 0
