"""The index snapshot and its one writer: cold starts without a scan of entries/,
one scan per memory per interval, writers without a journal streamed, a journal
that is trimmed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import pytest

from amfs_s3.config import S3Settings
from amfs_s3.layout import Layout
from tests.fixtures.s3 import all_keys
from tests.fixtures.s3_proxy import FaultProxy
from tests.fixtures.sidecar import (
    RunningSidecar,
    SidecarFactory,
    SidecarProcess,
    await_until,
    sidecar_env,
    spawn_sidecar,
)

from .test_api_entries import get, post
from .test_stream import body, open_stream

LAYOUT = Layout()
ENTRIES_LISTING = "prefix=amfs%2Fdefault%2Fentries%2F"
INTERVAL = 1.0  # resync interval: how often the lease holder scans and snapshots


@contextmanager
def proxy_to(s3_endpoint: str) -> Iterator[FaultProxy]:
    """A proxy of our own in front of S3: its request log is one sidecar's requests."""
    proxy = FaultProxy(upstream=s3_endpoint)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def entries_listings(proxy: FaultProxy) -> int:
    return sum(1 for method, path in proxy.requests if method == "GET" and ENTRIES_LISTING in path)


def holders(*sidecars: RunningSidecar) -> list[RunningSidecar]:
    return [s for s in sidecars if s.sidecar.sync is not None and s.sidecar.sync.lease]


@pytest.fixture
def settings(s3_settings: S3Settings) -> S3Settings:
    return s3_settings.model_copy(update={"resync_interval": INTERVAL})


async def test_a_cold_start_reads_the_snapshot_and_the_journal_not_entries(
    sidecar_factory: SidecarFactory, settings: S3Settings, s3_endpoint: str, s3_client: Any,
) -> None:
    first = sidecar_factory("first", settings=settings)
    async with first.session() as s:
        for n in range(30):
            assert (await post(s, "/api/v1/entries", body(f"svc/{n % 3}", f"k{n}", n)))[0] == 201
        assert (await post(s, "/api/v1/entries", body("svc/0", "k0", "v2")))[0] == 201
        status, outcome = await post(s, "/api/v1/outcomes", {
            "outcome_ref": "run-1", "outcome_type": "success", "causal_entry_keys": ["svc/1/k1"],
            "agent_id": "agent-a"})
        assert status == 201, outcome

        def snapshotted() -> bool:
            keys = all_keys(s3_client, settings.bucket, LAYOUT.index_root)
            return any(k.endswith(".json.gz") for k in keys)

        await await_until(snapshotted, timeout=INTERVAL * 5, message="a snapshot is written")
        # A write after the snapshot reaches the newcomer through the journal.
        assert (await post(s, "/api/v1/entries", body("late", "k", "after")))[0] == 201
        _, expected = await get(s, "/api/v1/stats")

    with proxy_to(s3_endpoint) as proxy:
        second = sidecar_factory(
            "second", settings=settings.model_copy(update={"endpoint_url": proxy.url}))
        async with second.session() as s:
            _, stats = await get(s, "/api/v1/stats")
            status, late = await get(s, "/api/v1/entries/late/k")
        ready_listings = entries_listings(proxy)
    assert (status, late["value"]) == (200, "after")
    for field in ("entries", "versions", "outcomes", "entities"):
        assert stats[field] == expected[field], field
    # 30 keys + late; k0 rewritten and k1 re-versioned by the outcome.
    assert (stats["entries"], stats["versions"], stats["outcomes"]) == (31, 33, 1)
    assert ready_listings == 0  # ready without one LIST of entries/


async def test_one_sidecar_per_memory_scans_whatever_the_number_of_sidecars(
    sidecar_factory: SidecarFactory, settings: S3Settings, s3_endpoint: str,
) -> None:
    with proxy_to(s3_endpoint) as a, proxy_to(s3_endpoint) as b, proxy_to(s3_endpoint) as c:
        proxies = {"a": a, "b": b, "c": c}
        running = {name: sidecar_factory(name, settings=settings.model_copy(
            update={"endpoint_url": proxy.url})) for name, proxy in proxies.items()}
        await await_until(lambda: len(holders(*running.values())) == 1, timeout=INTERVAL * 5,
                          message="one lease holder")
        before = {name: entries_listings(proxy) for name, proxy in proxies.items()}
        await asyncio.sleep(INTERVAL * 4)  # the quantity measured is work over time
        after = {name: entries_listings(proxy) for name, proxy in proxies.items()}
        holder = holders(*running.values())
    scans = {name: after[name] - before[name] for name in proxies}
    assert len(holder) == 1
    holder_name = next(n for n, r in running.items() if r is holder[0])
    assert scans[holder_name] >= 2, scans
    assert all(scans[n] == 0 for n in scans if n != holder_name), scans


async def test_a_write_without_a_journal_record_is_streamed_by_every_sidecar(
    sidecar_factory: SidecarFactory, settings: S3Settings, s3_client: Any,
) -> None:
    """A writer killed between its version PUT and its journal PUT."""
    left, right = sidecar_factory("left", settings=settings), sidecar_factory("right",
                                                                            settings=settings)
    entry = {"entity_path": "orphan", "key": "k", "version": 1, "value": "no journal",
             "provenance": {"agent_id": "killed", "session_id": "s",
                            "written_at": "2026-01-01T00:00:00Z"}}
    async with left.session() as ls, right.session() as rs, \
            open_stream(ls, "*") as left_events, open_stream(rs, "*") as right_events:
        s3_client.put_object(Bucket=settings.bucket, Key=LAYOUT.version_key("orphan", "k", 1),
                             Body=json.dumps(entry).encode())
        deadline = INTERVAL * 3 + settings.poll_interval + 2.0
        for events in (left_events, right_events):
            event = await events.next(timeout=deadline)
            assert (event.event, event.data["value"]) == ("write", "no journal")
        for s in (ls, rs):
            status, read = await get(s, "/api/v1/entries/orphan/k")
            assert (status, read["value"]) == (200, "no journal")


async def test_a_sidecar_killed_between_the_two_puts_loses_nothing(
    sidecar_factory: SidecarFactory, settings: S3Settings, fault_proxy: FaultProxy,
    socket_dir: Any, sidecar_processes: list[SidecarProcess], s3_client: Any,
) -> None:
    watcher = sidecar_factory("watcher", settings=settings)
    victim = spawn_sidecar(settings, socket_dir / "victim.sock",
                           env=sidecar_env(settings.model_copy(
                               update={"endpoint_url": fault_proxy.url})))
    sidecar_processes.append(victim)
    # The victim's journal PUT hangs, then dies: its version is in S3, its record
    # never will be (the stall ends before the proxy's own shutdown deadline).
    stalled = fault_proxy.add(method="PUT", path_contains="/journal/", stall=8, reset=True)
    async with watcher.session() as ws, open_stream(ws, "*") as events, aiohttp.ClientSession(
            base_url="http://localhost",
            connector=aiohttp.UnixConnector(path=str(victim.socket_path))) as vs:
        write = asyncio.ensure_future(post(vs, "/api/v1/entries", body("victim", "k", "last")))
        await await_until(lambda: stalled.fired == 1, message="the journal PUT is under way")
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.process.wait(10)
        write.cancel()
        assert LAYOUT.version_key("victim", "k", 1) in all_keys(s3_client, settings.bucket)
        event = await events.next(timeout=INTERVAL * 3 + settings.poll_interval + 2.0)
        assert (event.event, event.data["value"]) == ("write", "last")


async def test_the_lease_holder_trims_the_journal(
    sidecar_factory: SidecarFactory, settings: S3Settings, s3_client: Any,
) -> None:
    running = sidecar_factory(settings=settings)
    lookback_s = running.sidecar.sync.lookback_ms / 1000  # type: ignore[union-attr]
    async with running.session() as s:
        for n in range(5):
            await post(s, "/api/v1/entries", body("old", f"k{n}"))
        first = set(all_keys(s3_client, settings.bucket, LAYOUT.journal_root))
        assert len(first) == 5

        def trimmed() -> bool:
            return not first & set(all_keys(s3_client, settings.bucket, LAYOUT.journal_root))

        await await_until(trimmed, timeout=lookback_s + INTERVAL * 5, message="journal trimmed")
        # The entries themselves are untouched, and at most two snapshots are kept.
        assert len(all_keys(s3_client, settings.bucket, LAYOUT.entries_root)) == 5
        snapshots = [k for k in all_keys(s3_client, settings.bucket, LAYOUT.index_root)
                     if k.endswith(".json.gz")]
        assert 1 <= len(snapshots) <= 2
