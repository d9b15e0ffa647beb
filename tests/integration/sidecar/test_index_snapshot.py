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
from amfs_core.models import MemoryEntry

from amfs_s3.adapter import S3Adapter
from amfs_s3.config import S3Settings
from amfs_s3.index_store import IndexStore
from amfs_s3.layout import Layout
from amfs_s3.snapshot import Lease, decode_lease, lease_key, parse_lease_key
from amfs_sidecar.sync import LEASE_CLOCK_MARGIN_MS, LEASE_INTERVALS
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


# -- the load test's failure, the lease's death, the journal's trim ------------------


def slow_writer(settings: S3Settings) -> S3Adapter:
    """Another writer, whose journal PUT the test holds back by simply not calling it."""
    return S3Adapter(settings.bucket, endpoint_url=settings.endpoint_url,
                     region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing", writer_id="slow-writer")


def stored_entry(entity: str, key: str, version: int, value: Any) -> bytes:
    return json.dumps({"entity_path": entity, "key": key, "version": version, "value": value,
                       "provenance": {"agent_id": "slow", "session_id": "s",
                                      "written_at": "2026-01-01T00:00:00Z"}}).encode()


async def test_a_scan_during_a_writers_journal_put_streams_the_write_once(
    sidecar_factory: SidecarFactory, settings: S3Settings, s3_client: Any,
) -> None:
    """The 64-client load test's failure, deterministic: the holder's scan lists a
    version whose writer has PUT it but not yet its journal record. Before the fix
    the scan journalled and streamed it itself, and the record then streamed it
    again (after later versions, under load: out of order)."""
    quiet = settings.model_copy(update={"resync_interval": 3600.0})  # only our own scan
    holder = sidecar_factory("holder", settings=quiet)
    sync = holder.sidecar.sync
    assert sync is not None and sync.lease is not None
    writer = slow_writer(quiet)
    try:
        async with holder.session() as s, open_stream(s, "*") as events:
            s3_client.put_object(Bucket=quiet.bucket, Key=LAYOUT.version_key("inflight", "k", 1),
                                 Body=stored_entry("inflight", "k", 1, "in flight"))
            holder.call(sync.maintain)  # the scan lands between the writer's two PUTs
            writer.record_found_version("inflight", "k", 1)  # its journal record lands
            writer.write_with_change(MemoryEntry.model_validate(json.loads(
                stored_entry("sentinel", "k", 1, "after"))))
            seen: list[tuple[str, int]] = []
            while ("sentinel", 1) not in seen:
                event = await events.next(timeout=10)
                seen.append((event.data["entity_path"], event.data["version"]))
        assert seen == [("inflight", 1), ("sentinel", 1)]
    finally:
        writer.close()


async def test_a_version_left_without_a_record_is_journalled_by_a_later_scan(
    sidecar_factory: SidecarFactory, settings: S3Settings, s3_client: Any,
) -> None:
    """What the settle window leaves to the journal is not lost when no record comes."""
    quiet = settings.model_copy(update={"resync_interval": 3600.0})
    holder = sidecar_factory("holder", settings=quiet)
    sync = holder.sidecar.sync
    assert sync is not None
    async with holder.session() as s, open_stream(s, "*") as events:
        s3_client.put_object(Bucket=quiet.bucket, Key=LAYOUT.version_key("orphan", "k", 1),
                             Body=stored_entry("orphan", "k", 1, "no record"))
        holder.call(sync.maintain)  # too young: left to the journal
        assert sync.index.current("orphan", "k") == 0
        journal_before = all_keys(s3_client, quiet.bucket, LAYOUT.journal_root)
        sync.settle_ms = 0  # as if the window had passed: the next scan judges it
        holder.call(sync.maintain)
        event = await events.next(timeout=10)
    assert (event.data["entity_path"], event.data["value"]) == ("orphan", "no record")
    assert sync.index.current("orphan", "k") == 1
    found = set(all_keys(s3_client, quiet.bucket, LAYOUT.journal_root)) - set(journal_before)
    assert len(found) == 1  # published as a journal record, for every other sidecar


async def test_journal_puts_failing_reach_other_sidecars_streams_by_the_scan(
    sidecar_factory: SidecarFactory, settings: S3Settings, fault_proxy: FaultProxy,
) -> None:
    watcher = sidecar_factory("watcher", settings=settings)  # first: the lease holder
    assert watcher.sidecar.sync is not None and watcher.sidecar.sync.lease is not None
    failing = fault_proxy.add(method="PUT", path_contains="/journal/", status=503, times=-1)
    writer = sidecar_factory("writer", settings=settings.model_copy(
        update={"endpoint_url": fault_proxy.url}))
    async with watcher.session() as ws, writer.session() as vs, \
            open_stream(ws, "*") as events:
        status, written = await post(vs, "/api/v1/entries", body("unjournalled", "k", "lost"))
        assert status == 201, written
        assert failing.fired >= 1  # its journal record never reached S3
        sync = watcher.sidecar.sync
        event = await events.next(
            timeout=sync.settle_ms / 1000 + INTERVAL * 3 + settings.poll_interval + 2.0)
        assert (event.event, event.data["value"]) == ("write", "lost")
        status, read = await get(ws, "/api/v1/entries/unjournalled/k")
        assert (status, read["value"]) == (200, "lost")


async def test_a_dead_holders_lease_is_taken_over_when_it_expires(
    sidecar_factory: SidecarFactory, settings: S3Settings, s3_client: Any, socket_dir: Any,
    sidecar_processes: list[SidecarProcess],
) -> None:
    victim = spawn_sidecar(settings, socket_dir / "victim.sock")
    sidecar_processes.append(victim)

    def newest_lease() -> Lease | None:
        terms = sorted(t for k in all_keys(s3_client, settings.bucket, LAYOUT.index_root)
                       if (t := parse_lease_key(LAYOUT, k)) is not None)
        if not terms:
            return None
        body_ = s3_client.get_object(Bucket=settings.bucket,
                                     Key=lease_key(LAYOUT, terms[-1]))["Body"].read()
        return decode_lease(terms[-1], body_)

    first = await await_until(newest_lease, message="the victim takes the lease")
    heir = sidecar_factory("heir", settings=settings)
    assert heir.sidecar.sync is not None
    heir_id = heir.sidecar.sync.adapter.writer_id
    assert first.holder != heir_id and heir.sidecar.sync.lease is None
    os.kill(victim.process.pid, signal.SIGKILL)
    victim.process.wait(10)
    lease_ms = LEASE_INTERVALS * INTERVAL * 1000 + LEASE_CLOCK_MARGIN_MS
    taken = await await_until(
        lambda: (lease := newest_lease()) is not None and lease.holder == heir_id,
        timeout=(lease_ms / 1000) + INTERVAL * 3 + 5, message="the heir takes the lease")
    assert taken
    assert heir.sidecar.sync.lease is not None

    def snapshot_by_heir() -> bool:
        newest = IndexStore(heir.sidecar.sync.adapter).listing().newest_snapshot
        snapshot = None if newest is None else heir.sidecar.sync.store.read_snapshot(newest)
        return snapshot is not None and snapshot.writer == heir_id

    await await_until(snapshot_by_heir, timeout=INTERVAL * 5, message="the heir snapshots")


async def test_trim_never_deletes_records_newer_than_the_snapshot_minus_the_look_back(
    sidecar_factory: SidecarFactory, settings: S3Settings, s3_client: Any,
) -> None:
    quiet = settings.model_copy(update={"resync_interval": 3600.0})
    holder = sidecar_factory("holder", settings=quiet)
    sync = holder.sidecar.sync
    assert sync is not None and sync.lease is not None
    newest = sync.store.listing().newest_snapshot
    assert newest is not None
    horizon = newest - sync.lookback_ms  # what the next maintain may trim before
    planted = {ms: LAYOUT.journal_key(ms, "planted", n)
               for n, ms in enumerate((horizon - 60_000, horizon - 1, horizon, horizon + 1,
                                       newest))}
    for journal_key in planted.values():
        s3_client.put_object(Bucket=quiet.bucket, Key=journal_key, Body=json.dumps(
            {"kind": "outcome", "written_at_ms": 0, "outcome_ref": "none"}).encode())
    holder.call(sync.maintain)
    kept = set(all_keys(s3_client, quiet.bucket, LAYOUT.journal_root))
    assert {ms for ms, k in planted.items() if k in kept} == {horizon, horizon + 1, newest}
    # What streams are told may be gone (a resume from before it is a reset).
    assert sync.journal_trimmed_before_ms == horizon


def test_the_store_trims_exactly_what_is_older_than_asked(
    settings: S3Settings, s3_client: Any,
) -> None:
    adapter = slow_writer(settings)
    try:
        keys = [LAYOUT.journal_key(ms, "w", n) for n, ms in enumerate(
            [1_000, 1_999, 2_000, 2_001, 9_999_999_999_999])]
        for journal_key in keys:
            s3_client.put_object(Bucket=settings.bucket, Key=journal_key, Body=b"{}")
        assert IndexStore(adapter).trim_journal(2_000) == 2
        assert all_keys(s3_client, settings.bucket, LAYOUT.journal_root) == keys[2:]
    finally:
        adapter.close()


async def test_with_the_snapshot_off_a_sidecar_lists_entries_and_writes_no_index(
    sidecar_factory: SidecarFactory, settings: S3Settings, s3_client: Any,
) -> None:
    """``--index-snapshot=off``: the design before the snapshot, kept for the bench."""
    s3_client.put_object(Bucket=settings.bucket, Key=LAYOUT.version_key("pre", "k", 1),
                         Body=stored_entry("pre", "k", 1, "before start"))
    running = sidecar_factory("off", settings=settings.model_copy(
        update={"resync_interval": 3600.0}), index_snapshot=False)
    sync = running.sidecar.sync
    assert sync is not None
    assert sync.index.current("pre", "k") == 1  # found by its own listing at start
    async with running.session() as s:
        assert (await post(s, "/api/v1/entries", body("svc", "k", 1)))[0] == 201
    running.call(sync.maintain)
    assert sync.lease is None
    assert all_keys(s3_client, settings.bucket, LAYOUT.index_root) == []


async def test_a_version_too_young_for_the_scan_is_still_in_the_snapshot(
    sidecar_factory: SidecarFactory, settings: S3Settings, s3_client: Any,
) -> None:
    """The snapshot covers every version listed before covers_ms, settled or not: a
    cold start reads the journal only from covers_ms minus the look-back, so a young
    version left out of it could be missed if its record is older than that."""
    quiet = settings.model_copy(update={"resync_interval": 3600.0})
    holder = sidecar_factory("holder", settings=quiet)
    sync = holder.sidecar.sync
    assert sync is not None and sync.lease is not None
    s3_client.put_object(Bucket=quiet.bucket, Key=LAYOUT.version_key("young", "k", 1),
                         Body=stored_entry("young", "k", 1, "no record yet"))
    holder.call(sync.maintain)
    assert sync.index.current("young", "k") == 0  # left to the journal by the holder
    newest = sync.store.listing().newest_snapshot
    assert newest is not None
    snapshot = sync.store.read_snapshot(newest)
    assert snapshot is not None and snapshot.entries[("young", "k")] == (1, 1)
    # A cold start from it knows the version without any journal record.
    newcomer = sidecar_factory("newcomer", settings=quiet)
    assert newcomer.sidecar.sync is not None
    assert newcomer.sidecar.sync.index.current("young", "k") == 1


async def test_an_outcome_committed_while_the_holder_scanned_is_counted_once(
    sidecar_factory: SidecarFactory, settings: S3Settings,
) -> None:
    """The holder's snapshot covers the time its scan began, but counts what the later
    outcome listing saw: an outcome committed in between is in the count and in the
    journal a cold start reads. The snapshot names it, so it is counted once."""
    quiet = settings.model_copy(update={"resync_interval": 3600.0})
    holder = sidecar_factory("holder", settings=quiet)
    sync = holder.sidecar.sync
    assert sync is not None and sync.lease is not None
    scan_began = sync.adapter.clock.now_ms()  # the scan starts ...
    async with holder.session() as s:
        status, _ = await post(s, "/api/v1/outcomes", {
            "outcome_ref": "during-scan", "outcome_type": "success",
            "causal_entry_keys": [], "agent_id": "agent-a"})  # ... an outcome lands ...
        assert status == 201
    # ... and the snapshot it writes covers the scan's start, counting the outcome.
    sync.store.write_snapshot(sync._snapshot_builder(scan_began)())
    newcomer = sidecar_factory("newcomer", settings=quiet)
    async with newcomer.session() as s:
        _, stats = await get(s, "/api/v1/stats")
    assert stats["outcomes"] == 1
