"""The lease holder's rolling scan: a bounded slice of entries/ and outcomes/ per
interval, whatever the size of the memory, that still finds every journal-less
write (within one cycle) and keeps the counts exact across slice boundaries."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from amfs_core.models import OutcomeRecord, OutcomeType

from amfs_s3.config import S3Settings
from amfs_s3.index_store import IndexStore
from amfs_s3.snapshot import Lease, encode_lease, lease_key
from amfs_sidecar.index import EntryIndex
from amfs_sidecar.sync import Synchronizer
from tests.fixtures.sidecar import RunningSidecar, SidecarFactory

from .test_api_entries import get, post
from .test_index_snapshot import LAYOUT, entries_listings, proxy_to, slow_writer, stored_entry
from .test_stream import open_stream

OUTCOMES_LISTING = "prefix=amfs%2Fdefault%2Foutcomes%2F"

# Names whose object keys interleave: entity t/k's key v1.x sorts between t/k's
# v1.json and v10.json; key "a/b" of t is escaped, entity t/a's key b is not.
TRICKY: dict[tuple[str, str], int] = {
    ("t", "k"): 11, ("t/k", "v1.x"): 2, ("t/k", "b"): 1, ("t", "a/b"): 2, ("t/a", "b"): 1,
    ("svc", "cfg"): 3, ("bench/e001", "v2-migration"): 2, ("bench/e001", "k1"): 1,
}


def put_versions(s3_client: Any, bucket: str, names: dict[tuple[str, str], int]) -> int:
    """Every version of *names* written directly, as a writer without a journal would."""
    for (entity, key), versions in names.items():
        for version in range(1, versions + 1):
            s3_client.put_object(Bucket=bucket, Key=LAYOUT.version_key(entity, key, version),
                                 Body=stored_entry(entity, key, version, f"v{version}"))
    return sum(names.values())


def put_outcome(s3_client: Any, bucket: str, ref: str) -> None:
    record = OutcomeRecord(outcome_ref=ref, outcome_type=OutcomeType.SUCCESS, agent_id="killed",
                           committed_at=datetime(2026, 1, 1, tzinfo=UTC))
    s3_client.put_object(Bucket=bucket, Key=LAYOUT.outcome_key(ref),
                         Body=record.model_dump_json().encode())


def listings(proxy: Any, marker: str) -> int:
    return sum(1 for method, path in proxy.requests if method == "GET" and marker in path)


def quiet(settings: S3Settings) -> S3Settings:
    """No resync of the sidecar's own: the test drives every interval."""
    return settings.model_copy(update={"resync_interval": 3600.0})


def small_slices(running: RunningSidecar, *, pages: int, page_size: int) -> Synchronizer:
    sync = running.sidecar.sync
    assert sync is not None and sync.lease is not None
    sync.scan_pages, sync.scan_page_size = pages, page_size
    sync.settle_ms = 0  # every version written so far has settled: the scan judges it
    return sync


def test_the_page_budget_is_the_sidecars_setting(sidecar_factory: SidecarFactory) -> None:
    """--scan-pages reaches the synchronizer (the CLI's side: tests/unit/test_sidecar_cli.py)."""
    running = sidecar_factory(scan_pages=40)
    assert running.sidecar.sync is not None and running.sidecar.sync.scan_pages == 40


def test_a_cycle_of_slices_lists_every_name_once_with_all_its_versions(
    s3_settings: S3Settings, s3_client: Any,
) -> None:
    objects = put_versions(s3_client, s3_settings.bucket, TRICKY)
    adapter = slow_writer(s3_settings)
    try:
        store = IndexStore(adapter)
        whole = store.scan_entries()
        assert {name: len(found) for name, found in whole.items()} == TRICKY
        for pages, page_size in ((1, 1), (1, 2), (1, 3), (2, 2), (1, 5), (3, 4)):
            index, seen, after = EntryIndex(), {}, None
            while True:
                piece = store.scan_entry_slice(after, pages=pages, page_size=page_size)
                assert piece.after == after
                for name, found in piece.found.items():
                    assert name not in seen, (pages, page_size, name)  # whole, in one slice
                    seen[name] = found
                index.replace_slice({n: [v for v, _ in f] for n, f in piece.found.items()},
                                    scan_pass=1, since=index.mark())
                after = piece.through
                if piece.reached_end:
                    break
            assert seen == whole, (pages, page_size)
            assert (index.count("entries"), index.count("versions")) == (len(TRICKY), objects)
            assert index.current("t", "k") == 11
    finally:
        adapter.close()


async def test_a_journal_less_write_in_the_last_slice_is_streamed_within_one_cycle(
    sidecar_factory: SidecarFactory, s3_settings: S3Settings, s3_endpoint: str, s3_client: Any,
) -> None:
    """The holder lists one page per interval (the budget), so a memory larger than a
    page takes several intervals to pass; a version without a journal record at its
    end is found when the scan gets there, journalled, and streamed by every sidecar."""
    settings = quiet(s3_settings)
    names = {("roll", f"k{n:02d}"): 1 + n % 2 for n in range(10)}
    objects = put_versions(s3_client, settings.bucket, names)
    with proxy_to(s3_endpoint) as proxy:
        holder = sidecar_factory("holder", settings=settings.model_copy(
            update={"endpoint_url": proxy.url}))  # first: a full scan and the lease
        watcher = sidecar_factory("watcher", settings=settings)
        sync = small_slices(holder, pages=1, page_size=3)
        async with watcher.session() as ws, open_stream(ws, "*") as events:
            s3_client.put_object(Bucket=settings.bucket, Key=LAYOUT.version_key("zz", "k", 1),
                                 Body=stored_entry("zz", "k", 1, "journal-less"))
            per_interval: list[tuple[int, int]] = []
            # Every slice keeps at least one name, so a cycle is at most one per name.
            for _ in range(len(names) + 2):
                began = sync.scan_after
                before = (entries_listings(proxy), listings(proxy, OUTCOMES_LISTING))
                holder.call(sync.maintain)
                per_interval.append((entries_listings(proxy) - before[0],
                                     listings(proxy, OUTCOMES_LISTING) - before[1]))
                lease = sync.store.read_lease(sync.store.listing())
                assert lease is not None and lease.scan_after == began  # where the slice began
                if sync.index.current("zz", "k") == 1:
                    break
            event = await events.next(timeout=10)
            assert (event.data["entity_path"], event.data["value"]) == ("zz", "journal-less")
            _, stats = await get(ws, "/api/v1/stats")
        newest = sync.store.listing().newest_snapshot
        assert newest is not None
        snapshot = sync.store.read_snapshot(newest)
    assert snapshot is not None and snapshot.scan_after == sync.scan_after
    assert sync.index.current("zz", "k") == 1
    assert len(per_interval) >= objects // 3  # it rolled there, slice by slice
    assert all(counts == (1, 1) for counts in per_interval), per_interval  # the budget
    assert (stats["entries"], stats["versions"]) == (len(names) + 1, objects + 1)


async def test_a_version_too_young_for_its_slice_is_judged_at_the_next_interval(
    sidecar_factory: SidecarFactory, s3_settings: S3Settings, s3_client: Any,
) -> None:
    """Not one cycle later: the listing that saw it young is judged again, no LIST."""
    settings = quiet(s3_settings)
    put_versions(s3_client, settings.bucket, {("roll", f"k{n:02d}"): 1 for n in range(10)})
    holder = sidecar_factory("holder", settings=settings)
    sync = small_slices(holder, pages=1, page_size=3)
    sync.settle_ms = 3_600_000  # everything is young to the first slice
    async with holder.session() as s, open_stream(s, "*") as events:
        s3_client.put_object(Bucket=settings.bucket, Key=LAYOUT.version_key("aa", "k", 1),
                             Body=stored_entry("aa", "k", 1, "no record"))
        holder.call(sync.maintain)  # the first slice lists it, too young: left
        assert sync.index.current("aa", "k") == 0
        sync.settle_ms = 0  # as if the window had passed
        holder.call(sync.maintain)  # the second slice is elsewhere
        assert sync.scan_after is not None and "aa" not in sync.scan_after
        event = await events.next(timeout=10)
    assert (event.data["entity_path"], event.data["value"]) == ("aa", "no record")
    assert sync.index.current("aa", "k") == 1


async def test_counts_stay_exact_when_a_keys_versions_straddle_a_page_boundary(
    sidecar_factory: SidecarFactory, s3_settings: S3Settings, s3_client: Any,
) -> None:
    settings = quiet(s3_settings)
    objects = put_versions(s3_client, settings.bucket, TRICKY)
    holder = sidecar_factory("holder", settings=settings)
    sync = small_slices(holder, pages=1, page_size=2)
    assert sync.index.count("versions") == objects  # the first sync's full scan
    # Versions the index does not know yet, on both sides of several page ends.
    more = {("t", "k"): 3, ("t/k", "v1.x"): 1, ("svc", "cfg"): 2}
    for (entity, key), extra in more.items():
        start = TRICKY[(entity, key)] + 1
        for version in range(start, start + extra):
            s3_client.put_object(Bucket=settings.bucket,
                                 Key=LAYOUT.version_key(entity, key, version),
                                 Body=stored_entry(entity, key, version, "late"))
    total = objects + sum(more.values())
    for _ in range(2 * total):  # two cycles at least: page size 2, one page per interval
        holder.call(sync.maintain)
        # Never more than the versions stored: no name counted twice across slices.
        assert sync.index.count("versions") <= total
    async with holder.session() as s:
        _, stats = await get(s, "/api/v1/stats")
    assert (stats["entries"], stats["versions"]) == (len(TRICKY), total)
    assert sync.index.current("t", "k") == 14 and sync.index.versions_of("t", "k") == 14


async def test_the_outcome_count_is_exact_after_a_pass_over_several_slices(
    sidecar_factory: SidecarFactory, s3_settings: S3Settings, s3_endpoint: str, s3_client: Any,
) -> None:
    settings = quiet(s3_settings)
    with proxy_to(s3_endpoint) as proxy:
        holder = sidecar_factory("holder", settings=settings.model_copy(
            update={"endpoint_url": proxy.url}))
        sync = small_slices(holder, pages=1, page_size=2)
        async with holder.session() as s:
            for n in range(3):  # committed: journalled, counted at once
                status, _ = await post(s, "/api/v1/outcomes", {
                    "outcome_ref": f"run-{n}", "outcome_type": "success",
                    "causal_entry_keys": [], "agent_id": "agent-a"})
                assert status == 201
            for n in range(3):  # a writer killed before its journal PUT: only a pass counts it
                put_outcome(s3_client, settings.bucket, f"lost-{n}")
            counts = []
            for _ in range(8):
                before = listings(proxy, OUTCOMES_LISTING)
                holder.call(sync.maintain)
                assert listings(proxy, OUTCOMES_LISTING) - before == 1  # the budget
                counts.append(sync.index.count("outcomes"))
                if counts[-1] == 6:
                    break
            status, _ = await post(s, "/api/v1/outcomes", {
                "outcome_ref": "run-late", "outcome_type": "success",
                "causal_entry_keys": [], "agent_id": "agent-a"})
            assert status == 201
            for _ in range(8):  # a whole pass more: the late one is counted once
                holder.call(sync.maintain)
            _, stats = await get(s, "/api/v1/stats")
    # Six objects, two a page: the pass takes three intervals, then counts them all.
    assert counts == [3, 3, 6], counts
    assert stats["outcomes"] == 7


async def test_a_sidecar_taking_over_the_lease_carries_on_where_the_last_term_began(
    sidecar_factory: SidecarFactory, s3_settings: S3Settings, s3_client: Any,
) -> None:
    settings = quiet(s3_settings)
    put_versions(s3_client, settings.bucket, TRICKY)
    first = sidecar_factory("first", settings=settings)
    first_sync = small_slices(first, pages=1, page_size=2)
    for _ in range(3):
        first.call(first_sync.maintain)
    position = first_sync.scan_after
    assert position is not None
    first.stop()
    # The dead holder's last term, expired, says where its slice began.
    lease = first_sync.store.read_lease(first_sync.store.listing())
    assert lease is not None
    s3_client.put_object(Bucket=settings.bucket, Key=lease_key(LAYOUT, lease.term + 1),
                         Body=encode_lease(Lease(term=lease.term + 1, holder=lease.holder,
                                                 expires_at_ms=0, scan_after=position)))
    heir = sidecar_factory("heir", settings=settings)
    heir_sync = heir.sidecar.sync
    assert heir_sync is not None and heir_sync.lease is None
    heir_sync.scan_pages, heir_sync.scan_page_size = 1, 2
    heir.call(heir_sync.maintain)
    assert heir_sync.lease is not None and heir_sync.lease.scan_after == position
    assert heir_sync.scan_after is not None and heir_sync.scan_after > position
    assert json.loads(s3_client.get_object(
        Bucket=settings.bucket, Key=lease_key(LAYOUT, heir_sync.lease.term))["Body"].read()
    )["scan_after"] == position
