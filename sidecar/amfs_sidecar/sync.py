"""Keeping the index in step with S3 and feeding the watch streams.

The first sync (bucket check, conditional-write probe, then the newest index
snapshot and the journal since it — or, for a memory that has none yet, a scan
of ``entries/``) makes the sidecar ready. After it, a journal poll every
``poll_interval`` seconds costs about one LIST and turns other writers' changes
into index updates and stream events. Every ``resync_interval`` seconds each
sidecar looks at the lease in ``index/`` (one LIST, one GET); the one sidecar
holding it scans a slice of ``entries/`` for writers that wrote no journal,
journals what it finds (so every sidecar streams it), writes a new snapshot from
its index and trims the journal.

The holder's scan rolls (:meth:`Synchronizer.roll`): each interval it lists at most
``scan_pages`` pages of ``entries/`` and as many of ``outcomes/``, from where the
previous interval stopped, wrapping to the start at the end (one *cycle*). So no
sidecar's cost grows with the memory, the holder's included; the price is that a
version whose writer wrote no journal record (killed between its two PUTs) is
found within one cycle, not one interval:

    worst-case detection ~ ceil(objects in entries/ / (page size x scan_pages))
                           x resync_interval  (+ the settle window)

(a version written just after the scan passed its place waits for the next cycle;
one written just before, too young to judge then, is judged at the next interval).
E.g. 1,000,000 version objects, pages of 1,000, 5 pages: 200 intervals of 5 min,
16 h 40 min. A memory of up to ``scan_pages`` pages is listed whole every
interval, as before. Everything written with a journal record reaches every
sidecar at the next poll, whatever the scan.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from amfs_core.evidence import cited_entries
from amfs_core.models import MemoryEntry, OutcomeRecord

from amfs_s3.adapter import MAX_JOURNAL_RECORDS_PER_POLL, S3Adapter
from amfs_s3.exceptions import AdapterError, S3AccessError
from amfs_s3.index_store import LIST_PAGE_SIZE, EntrySlice, IndexListing, IndexStore
from amfs_s3.journal import DEFAULT_LOOKBACK_MS, Change, JournalCursor
from amfs_s3.snapshot import IndexSnapshot, Lease
from amfs_sidecar.index import EntryIndex, ValueCache, encode_entry
from amfs_sidecar.logs import fields
from amfs_sidecar.metrics import SidecarMetrics
from amfs_sidecar.replay import DEFAULT_REPLAY_WINDOW_MS, StreamReplay, streamable
from amfs_sidecar.stream import Event, Resumption, StreamHub, StreamSourceFailed

logger = logging.getLogger(__name__)

T = TypeVar("T")
Offload = Callable[..., Awaitable[Any]]
# What a listing of entries/ shows: (entity, key) → [(version, LastModified ms)].
Listed = dict[tuple[str, str], list[tuple[int, int]]]

MAX_RETRY_SECONDS = 30.0
# A lease outlives two missed renewals, so a slow holder keeps it and a dead one
# is replaced within about three intervals.
LEASE_INTERVALS = 2
# Lease times are in the storage's clock as each sidecar estimates it from S3's
# Date headers (whole seconds): two sidecars' estimates agree within this.
LEASE_CLOCK_MARGIN_MS = 5_000
# A journal PUT's usual latency plus LastModified's one-second resolution.
SETTLE_MARGIN_MS = 2_000
# LIST pages of entries/ (and, separately, of outcomes/) the lease holder's rolling
# scan reads per interval: its cost per hour, at any size of memory. More pages
# shorten the cycle in which a journal-less write is found (see the module doc).
SCAN_PAGES_PER_INTERVAL = 5


@dataclasses.dataclass(frozen=True)
class EntryPass:
    """One pass of the holder's rolling scan of ``entries/``, start to end. One that
    began at the start (*whole*) has listed every name by its end, so the names it
    never listed are gone from the memory (see :meth:`EntryIndex.drop_unlisted`)."""

    number: int
    mark: int  # the index's history point when the pass began
    whole: bool


@dataclasses.dataclass
class OutcomeCycle:
    """One pass of the holder's rolling listing of ``outcomes/``, from the start.

    The outcome count cannot be corrected slice by slice: the index keeps a count,
    not every ref, so it cannot tell which counted outcomes a slice covers. A pass
    collects the refs it lists (outcomes are never deleted, so at its end it has seen
    every outcome stored before it began) and only then adopts the count, with those
    the journal added since *mark* that it missed. Between passes the journal keeps
    the count exact; an outcome whose writer wrote no record is counted within one
    pass, as a journal-less version is found within one cycle.
    """

    mark: int  # the index's history point when the pass began
    after: str | None = None  # where the next slice lists from (None: the start)
    refs: dict[str, int] = dataclasses.field(default_factory=dict)  # ref → LastModified ms


def write_event(change: Change, body: bytes | None) -> Event:
    return Event(change, "write", body, (change.entity_path or "",))


def outcome_event(change: Change, record: OutcomeRecord) -> Event:
    paths = tuple(dict.fromkeys(path for path, _ in cited_entries(record)))
    return Event(change, "outcome", record.model_dump_json().encode(), paths)


def unfetched_event(change: Change) -> Event:
    """A change nobody watches yet: numbered and buffered now, fetched if a resume wants it."""
    if change.kind == "write":
        return write_event(change, None)
    return Event(change, "outcome", None, None)


class Synchronizer:
    """Drives the index and the hub from S3: first sync, polls, resyncs."""

    def __init__(
        self,
        adapter: S3Adapter,
        index: EntryIndex,
        cache: ValueCache,
        hub: StreamHub,
        metrics: SidecarMetrics,
        offload: Offload,
        *,
        poll_interval: float,
        resync_interval: float,
        lookback_ms: int = DEFAULT_LOOKBACK_MS,
        replay_window_ms: int = DEFAULT_REPLAY_WINDOW_MS,
        index_snapshot: bool = True,
        scan_pages: int = SCAN_PAGES_PER_INTERVAL,
        scan_page_size: int = LIST_PAGE_SIZE,
    ) -> None:
        self.adapter = adapter
        self.index = index
        self.cache = cache
        self.hub = hub
        self.metrics = metrics
        self.offload = offload
        self.poll_interval = poll_interval
        self.resync_interval = resync_interval
        self.lookback_ms = lookback_ms
        self.index_snapshot = index_snapshot
        # The rolling scan's budget: pages per interval, keys per page (a test's
        # small pages make a small memory span several slices).
        self.scan_pages = scan_pages
        self.scan_page_size = scan_page_size
        # Where the holder's next slice of entries/ lists from (None: the start), and
        # where a snapshot this sidecar read said it would (an heir's fallback).
        self.scan_after: str | None = None
        self._snapshot_scan_after: str | None = None
        self._outcome_cycle: OutcomeCycle | None = None
        self._entry_pass: EntryPass | None = None
        self._passes = 0
        # What earlier slices listed that was too young to judge: (the index's history
        # point of that listing, its pass, the names' versions).
        self._young: list[tuple[int, int, Listed]] = []
        # When this sidecar's last full scan began: its index holds every version
        # stored before then (0: it never scanned the whole memory).
        self._scanned_whole_ms = 0
        # How old a version must be before a scan may call it journal-less: its
        # writer's journal PUT and two of our polls fit in it, with a second for
        # LastModified's resolution.
        self.settle_ms = int(2 * poll_interval * 1000) + SETTLE_MARGIN_MS
        self.cursor: JournalCursor | None = None
        self.bucket_reachable = False
        self.conditional_writes: bool | None = None
        self.last_error: str | None = None
        self.last_poll_success: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._future_records_counted = 0
        self.store = IndexStore(adapter)
        self.lease: Lease | None = None
        # Outcome records stamped before this were counted by the snapshot.
        self._outcomes_counted_before_ms = 0
        # Journal records stamped before this may be gone (the lease holder trims
        # behind the previous snapshot): a stream resuming from before it must reset.
        self.journal_trimmed_before_ms = 0
        # Versions the last scan listed but left to the journal (too young to judge).
        self._unsettled_tops: dict[tuple[str, str], tuple[int, int]] = {}
        self._recent_outcomes: set[str] = set()
        metrics.bind_storage_clock_offset(lambda: adapter.clock.offset_seconds)
        # Storage time before which every journal record has reached the hub:
        # 0 until the first sync (nothing is promised before the cursor exists).
        self.stream_safe_ms = 0
        self.replay_window_ms = replay_window_ms
        hub.position = lambda: self.stream_safe_ms
        # What the metric says: records S3 refused, not those queued behind a busy writer.
        metrics.bind_pending_journal_records(lambda: adapter.held_journal_records)

    @property
    def ready(self) -> bool:
        return self.index.synced and self.bucket_reachable

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="amfs-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def poke(self) -> None:
        """Poll now rather than at the end of the interval (tests, shutdown)."""
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        self._wake.clear()

    async def _run(self) -> None:
        delay = self.poll_interval
        while not self.index.synced:
            try:
                await self.first_sync()
            except Exception as exc:
                self._failed("first sync", exc)
                await self._sleep(delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)
        next_resync = time.monotonic() + self.resync_interval
        while True:
            await self._sleep(self.poll_interval)
            try:
                await self.poll_once()
                if time.monotonic() >= next_resync:
                    await self.maintain()
                    next_resync = time.monotonic() + self.resync_interval
            except Exception as exc:
                # The poll is the sidecar's heartbeat to S3: when it fails after
                # the client's retries, /ready says so until a poll succeeds again.
                self.bucket_reachable = False
                self._failed("poll", exc)

    def _failed(self, what: str, exc: Exception) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        logger.warning(f"{what} failed", extra=fields(error=self.last_error))

    # -- the three kinds of sync -------------------------------------------------

    async def first_sync(self) -> None:
        """Bucket check, probe, newest snapshot + journal since (or a full scan)."""
        await self.offload(self.adapter.check_bucket)
        self.bucket_reachable = True
        self.conditional_writes = await self.offload(
            lambda: self.adapter.conditional_writes_supported
        )
        self.metrics.set_conditional_writes(bool(self.conditional_writes))
        if not self.conditional_writes:
            logger.warning(
                "provider ignores If-None-Match: concurrent writers may overwrite each other",
                extra=fields(bucket=self.adapter.settings.bucket),
            )
        snapshot: IndexSnapshot | None = None
        listing = IndexListing()
        if self.index_snapshot:
            listing = await self.offload(self.store.listing)
            self._note_trim_horizon(listing)
            snapshot = await self._newest_snapshot(listing)
        if snapshot is not None:
            await self._start_from_snapshot(snapshot)
        else:
            # The cursor starts before the scan, so a change made during the scan
            # is either in the scan or in the first poll (observe() is idempotent).
            self.cursor = self._cursor_from(self.adapter.clock.now_ms())
            await self.maintain(listing, scan_anyway=True)
        # Storage time before which every journal record has reached the hub; the
        # polls move it on (_advance_safe_point).
        if self.cursor is not None:
            self.stream_safe_ms = self.cursor.high_water_ms - self.lookback_ms
        self.index.synced = True
        self.last_error = None
        logger.info("first sync complete", extra=fields(
            source="snapshot" if snapshot is not None else "scan",
            entries=self.index.count("entries"), versions=self.index.count("versions"),
            outcomes=self.index.count("outcomes"), conditional_writes=self.conditional_writes,
        ))

    def _cursor_from(self, ms: int) -> JournalCursor:
        clock = self.adapter.clock
        return JournalCursor.starting_now(
            self.adapter.layout, ms, lookback_ms=self.lookback_ms, clock=clock.now_ms
        )

    async def _newest_snapshot(self, listing: IndexListing) -> IndexSnapshot | None:
        newest = listing.newest_snapshot
        if newest is None:
            return None
        try:
            snapshot: IndexSnapshot | None = await self.offload(self.store.read_snapshot, newest)
        except AdapterError as exc:
            if isinstance(exc, S3AccessError):
                raise
            logger.warning("index snapshot unreadable; scanning instead",
                           extra=fields(error=str(exc)))
            return None
        return snapshot

    async def _start_from_snapshot(self, snapshot: IndexSnapshot) -> None:
        """Adopt *snapshot*, then read the journal from the time it covers."""
        mark = self.index.mark()
        self.cursor = self._cursor_from(snapshot.covers_ms)
        self.index.adopt(snapshot.entries, since=mark, report=False)
        self.index.set_outcomes(snapshot.outcomes)
        self.index.seed_outcomes(snapshot.recent_outcomes)
        self._outcomes_counted_before_ms = snapshot.covers_ms
        self._snapshot_scan_after = snapshot.scan_after
        # Ready means the journal since the snapshot is in, however long it is.
        while len(await self.poll_once()) >= MAX_JOURNAL_RECORDS_PER_POLL:
            pass

    async def maintain(self, listing: IndexListing | None = None, *,
                       scan_anyway: bool = False) -> None:
        """The periodic look at ``index/``: take or renew the lease, and if it is
        ours, scan a slice, journal what only the scan found, snapshot, trim.

        *scan_anyway* is the first sync of a memory without a snapshot: there is
        nothing to start from, so it lists the whole memory (and, holding the lease,
        writes the first snapshot)."""
        if not self.index_snapshot:
            await self.scan()  # every sidecar for itself, as before the snapshot
            return
        if listing is None:
            listing = await self.offload(self.store.listing)
        self._note_trim_horizon(listing)
        current = await self.offload(self.store.read_lease, listing)
        duration_ms = int(LEASE_INTERVALS * self.resync_interval * 1000) + LEASE_CLOCK_MARGIN_MS
        held = self.lease is not None
        start = self.scan_after if held else self._inherited_scan_position(current)
        self.lease = await self.offload(functools.partial(
            self.store.take_lease, self.adapter.writer_id, current,
            now_ms=self.adapter.clock.now_ms(), duration_ms=duration_ms, scan_after=start))
        if self.lease is None:
            self._forget_passes()  # a later term of ours begins passes of its own
            if not scan_anyway:
                await self._catch_up_if_trimmed(listing)
                return
        if scan_anyway:
            covers_ms = await self.scan()
            self.scan_after = None
            self._forget_passes()
        else:
            if not held:
                self.scan_after = start
                self._forget_passes()
            covers_ms = await self.roll()
        if self.lease is None:
            return
        build = self._snapshot_builder(covers_ms)
        await self.offload(lambda: self.store.write_snapshot(build()))
        written = IndexListing(sorted([*listing.snapshots, covers_ms]), listing.lease_terms)
        self._note_trim_horizon(written)
        await self.offload(self.store.prune_snapshots, written)
        # One interval of journal is kept beyond the newest snapshot, so a sidecar
        # whose polls failed for a while still finds what it missed.
        previous = listing.newest_snapshot
        if previous is not None:
            await self.offload(self.store.trim_journal, previous - self.lookback_ms)

    def _forget_passes(self) -> None:
        """Drop the rolling scan's passes under way: they are this term's."""
        self._entry_pass, self._outcome_cycle, self._young = None, None, []

    def _inherited_scan_position(self, current: Lease | None) -> str | None:
        """Where a sidecar taking the lease carries on the rolling scan: where the last
        term's holder began its slice (at most one slice is listed again), else where
        the newest snapshot this sidecar read said, else the start."""
        if current is not None and current.scan_after is not None:
            return current.scan_after
        return self._snapshot_scan_after

    def _note_trim_horizon(self, listing: IndexListing) -> None:
        """Where the holder trims with these snapshots: before the older of the two
        newest, minus the look-back (see :meth:`maintain`)."""
        if len(listing.snapshots) >= 2:
            self.journal_trimmed_before_ms = max(
                self.journal_trimmed_before_ms, listing.snapshots[-2] - self.lookback_ms)

    async def _catch_up_if_trimmed(self, listing: IndexListing) -> None:
        """A sidecar whose cursor is behind what the journal still holds re-reads
        the newest snapshot rather than trust a journal with a hole in it."""
        if len(listing.snapshots) < 2 or self.cursor is None:
            return
        kept_from = listing.snapshots[-2] - self.lookback_ms
        if self.cursor.high_water_ms >= kept_from:
            return
        snapshot = await self._newest_snapshot(listing)
        if snapshot is None:
            return
        newer = self.index.adopt(snapshot.entries, since=self.index.mark())
        self.index.set_outcomes(snapshot.outcomes)
        self.index.seed_outcomes(snapshot.recent_outcomes)
        self._outcomes_counted_before_ms = snapshot.covers_ms
        self._snapshot_scan_after = snapshot.scan_after
        self.cursor = self._cursor_from(snapshot.covers_ms)
        logger.warning("this sidecar fell behind the retained journal; index re-read from the "
                       "newest snapshot", extra=fields(changes=len(newer)))

    def _snapshot_builder(self, covers_ms: int) -> Callable[[], IndexSnapshot]:
        """Copies, now, of what the snapshot needs from state the event loop changes;
        the call returned builds the snapshot from them and the index in a worker
        thread (a million names took the loop 2.2 s to gather)."""
        unsettled = dict(self._unsettled_tops)
        recent = frozenset(self._recent_outcomes | self.index.recent_outcome_refs())
        outcomes, scan_after = self.index.count("outcomes"), self.scan_after
        writer = self.adapter.writer_id

        def build() -> IndexSnapshot:
            entries = self.index.counts()
            for name, (top, versions) in unsettled.items():
                if top > entries.get(name, (0, 0))[0]:
                    entries[name] = (top, versions)
            return IndexSnapshot(covers_ms=covers_ms, writer=writer, entries=entries,
                                 outcomes=outcomes, recent_outcomes=recent,
                                 scan_after=scan_after)

        return build

    async def scan(self) -> int:
        """Full scan of entries/ (LISTs only) and an outcome count; every settled
        version it finds that the index did not know is journalled, so every
        sidecar's streams get it. Returns the storage time the scan began. The
        first sync of a memory without a snapshot, and every resync with the
        snapshot off; the lease holder rolls instead (:meth:`roll`).

        A version younger than :attr:`settle_ms` is left to the journal: its
        writer (this sidecar or another) has just PUT it and is PUTting its
        journal record, which the polls deliver. Judging it now would journal
        and stream it a second time, after later versions of the same key (the
        load test's out-of-order duplicates); a version that has no record at
        all is found by the next scan, once it has settled.
        """
        mark = self.index.mark()
        covers_ms = self.adapter.clock.now_ms()
        listed: dict[tuple[str, str], list[tuple[int, int]]] = await self.offload(
            self.store.scan_entries)
        scanned = {name: [v for v, _ in found] for name, found in listed.items()}
        unsettled = self._unsettled(listed, covers_ms)
        newer = self.index.replace(scanned, since=mark, unsettled=unsettled)
        # The holder's index leaves them to the journal, but a snapshot must hold
        # every version listed before covers_ms: a cold start reads the journal only
        # from covers_ms minus the look-back, and such a record may be older.
        self._unsettled_tops = {name: (max(scanned[name]), len(scanned[name]))
                                for name in unsettled}
        outcomes: dict[str, int] = await self.offload(self.store.scan_outcomes)
        self._count_outcomes(outcomes, since=mark, covers_ms=covers_ms)
        self._scanned_whole_ms = covers_ms
        await self._journal_found(newer)
        return covers_ms

    async def roll(self) -> int:
        """The lease holder's rolling scan: at most :attr:`scan_pages` LIST pages of
        entries/ from where the last interval stopped (on to the start with what is
        left once it reaches the end, never past the end twice), each slice judged
        like :meth:`scan` judges the whole memory, then as many pages of outcomes/
        (see :class:`OutcomeCycle`). Returns the storage time the snapshot covers.

        A journal-less version is found once the scan passes it: within one cycle,
        ``ceil(objects in entries/ / (scan_page_size x scan_pages))`` intervals.
        """
        began_ms = self.adapter.clock.now_ms()
        # The snapshot is the index, which holds every version stored before the last
        # full scan and every journal record before the polls' safe point: a cold
        # start from it reads the journal from the later of the two (minus the
        # look-back; the safe point is already that far behind what was listed).
        covers_ms = min(began_ms, max(self._scanned_whole_ms,
                                      self.stream_safe_ms + self.lookback_ms))
        self._unsettled_tops = {}
        young, self._young = self._young, []
        for mark, scan_pass, listed in young:
            await self._adopt_listed(listed, mark, began_ms, scan_pass)
        pages = self.scan_pages
        while True:
            from_start = self.scan_after is None
            entry_pass = self._entry_pass
            if entry_pass is None:
                self._passes += 1
                entry_pass = self._entry_pass = EntryPass(self._passes, self.index.mark(),
                                                          whole=from_start)
            mark = self.index.mark()
            piece: EntrySlice = await self.offload(functools.partial(
                self.store.scan_entry_slice, self.scan_after, pages=pages,
                page_size=self.scan_page_size))
            await self._adopt_listed(piece.found, mark, began_ms, entry_pass.number)
            self.scan_after = piece.through
            pages -= piece.pages
            if piece.reached_end:
                if entry_pass.whole:
                    await self.offload(functools.partial(
                        self.index.drop_unlisted, entry_pass.number, since=entry_pass.mark))
                self._entry_pass = None
            if pages <= 0 or (piece.reached_end and from_start):
                break
        await self._roll_outcomes(covers_ms)
        return covers_ms

    async def _adopt_listed(self, listed: Listed, mark: int, began_ms: int,
                            scan_pass: int) -> None:
        """Fold what a slice listed into the index (those names only) and journal what
        only it found. Names with versions too young to judge are judged again at the
        next interval from this same listing (no LIST: they are settled by then), so
        a journal-less write the scan passed early is found one interval later, not
        one cycle later."""
        scanned = {name: [v for v, _ in found] for name, found in listed.items()}
        unsettled = self._unsettled(listed, began_ms)
        newer = self.index.replace_slice(scanned, scan_pass=scan_pass, since=mark,
                                         unsettled=unsettled)
        self._unsettled_tops.update({name: (max(scanned[name]), len(scanned[name]))
                                     for name in unsettled})
        if unsettled:
            self._young.append((mark, scan_pass, {name: listed[name] for name in unsettled}))
        await self._journal_found(newer)

    async def _roll_outcomes(self, covers_ms: int) -> None:
        """At most :attr:`scan_pages` pages of outcomes/ on from the last interval's;
        a pass that reaches the end adopts its count and the next begins."""
        pages = self.scan_pages
        while True:
            cycle = self._outcome_cycle
            if cycle is None:
                cycle = self._outcome_cycle = OutcomeCycle(mark=self.index.mark())
            from_start = cycle.after is None
            piece = await self.offload(functools.partial(
                self.store.scan_outcome_slice, cycle.after, pages=pages,
                page_size=self.scan_page_size))
            cycle.refs.update(piece.found)
            cycle.after = piece.through
            pages -= piece.pages
            if piece.reached_end:
                self._count_outcomes(cycle.refs, since=cycle.mark, covers_ms=covers_ms)
                self._outcome_cycle = None
            if pages <= 0 or (piece.reached_end and from_start):
                break

    def _unsettled(self, listed: Listed, began_ms: int) -> dict[tuple[str, str], list[int]]:
        """Per name, the listed versions too young to judge (see :meth:`scan`)."""
        if not self.index.synced:
            return {}
        # LastModified is whole seconds on most providers, so a version may look up
        # to a second older than it is: the window allows for it.
        settled_before = began_ms - self.settle_ms
        unsettled: dict[tuple[str, str], list[int]] = {}
        for name, found in listed.items():
            young = [v for v, modified in found if modified >= settled_before]
            if young:
                unsettled[name] = young
        return unsettled

    def _count_outcomes(self, outcomes: dict[str, int], *, since: int, covers_ms: int) -> None:
        """Adopt the count of a listing of all of outcomes/ (ref → LastModified ms)
        that began at the index's history point *since*."""
        refs = set(outcomes)
        self.index.set_outcomes(len(refs), listed=refs, since=since)
        # Outcomes stored around or after covers_ms have journal records a cold
        # start from this snapshot reads again: the snapshot names them.
        recent_from = covers_ms - self.lookback_ms - self.settle_ms
        self._recent_outcomes = {ref for ref, ms in outcomes.items() if ms >= recent_from}
        # And an own commit whose answer comes back after this listing saw it (the
        # API counts it then) must find it counted already.
        self.index.seed_outcomes(self._recent_outcomes)

    async def _journal_found(self, newer: list[tuple[str, str, int]]) -> None:
        """Journal and stream the versions a scan found that the journal did not carry."""
        if not newer or not self.index.synced:
            return
        logger.info("scan found changes the journal did not carry; journalling them",
                    extra=fields(count=len(newer)))
        for entity_path, key, version in newer:
            change = await self.offload(
                self.adapter.record_found_version, entity_path, key, version)
            self.note_local(change)
            event = None
            if self.hub.wants((entity_path,)):
                event = await self.event_for(change)
                if event is not None:
                    self.hub.publish(event)
            if event is None:
                self.hub.publish(unfetched_event(change))  # the resume buffer has every change

    async def poll_once(self) -> list[Change]:
        """One journal poll: index updates, lag observations, stream events.

        Returns the changes handled; a change whose object could not be read
        is left for the next poll, with everything after it.
        """
        cursor = self.cursor
        if cursor is None:
            return []
        started = time.perf_counter()
        listed_at_ms = self.adapter.clock.now_ms()
        # This sidecar's own records that S3 refused earlier go first.
        for change in await self.offload(self.adapter.flush_journal):
            self.note_local(change)
        changes: list[Change] = await self.offload(
            functools.partial(self.adapter.poll_journal, cursor, confirm=False)
        )
        # Lag is measured on the storage's clock, the one journal times are in.
        observed_at = self.adapter.clock.now()
        self.metrics.observe_poll_duration(time.perf_counter() - started)
        handled = await self.apply(changes)
        self._advance_safe_point(listed_at_ms)
        for change in handled:
            self.metrics.observe_poll_lag(max(observed_at - change.written_at_ms / 1000.0, 0.0))
        future = self.adapter.future_records
        self.metrics.count_future_records(future - self._future_records_counted)
        self._future_records_counted = future
        now = time.time()
        self.last_poll_success = now
        self.last_error = None
        self.metrics.mark_poll_success(now)
        self.bucket_reachable = True
        return handled

    async def apply(self, changes: list[Change]) -> list[Change]:
        """Fold other writers' changes into the index, then into the streams.

        Each change is confirmed on the cursor only after its event is
        published, in journal order. The first one whose entry or outcome could
        not be fetched (S3 failing) ends the batch, so it and every later change
        are listed again by the next poll; the hub drops ids it has published
        already, so a change handed over twice still reaches each stream once.
        """
        wanted: dict[str, Change] = {}
        for change in changes:
            if change.kind == "write" and change.entity_path and change.key and change.version:
                self.index.observe(change.entity_path, change.key, change.version)
                if self.hub.wants((change.entity_path,)):
                    wanted[change.journal_key] = change
            elif change.kind == "outcome" and change.outcome_ref and len(self.hub):
                wanted[change.journal_key] = change
        # The entries and outcomes behind the events are fetched concurrently,
        # and published in journal order.
        fetched = await asyncio.gather(*(self.event_for(c) for c in wanted.values()),
                                       return_exceptions=True)
        events = dict(zip(wanted, fetched, strict=True))
        handled: list[Change] = []
        for change in changes:
            event = events.get(change.journal_key)
            if isinstance(event, BaseException):
                if not isinstance(event, Exception):
                    raise event  # cancelled: the sidecar is stopping
                error = f"{type(event).__name__}: {event}"
                if not _unreadable_for_good(event):
                    logger.warning("change not streamed yet: its object could not be read; "
                                   "retrying at the next poll",
                                   extra=fields(journal_key=change.journal_key, error=error))
                    break
                # The object itself is broken (not a MemoryEntry, an illegal name):
                # reading it again cannot help, and waiting would hold up the rest.
                logger.warning("change not streamed: its object is unreadable",
                               extra=fields(journal_key=change.journal_key, error=error))
            elif event is not None:
                self.hub.publish(event)
            elif change.journal_key not in wanted and streamable(change):
                self.hub.publish(unfetched_event(change))  # the resume buffer has every change
            if (change.kind == "outcome" and change.outcome_ref
                    and change.written_at_ms >= self._outcomes_counted_before_ms):
                self.index.add_outcome(change.outcome_ref)  # only once confirmed
            if self.cursor is not None:
                self.cursor.confirm(change.journal_key)
            handled.append(change)
        return handled

    def _advance_safe_point(self, listed_at_ms: int) -> None:
        """After a poll that listed at *listed_at_ms*: a record older than that minus
        the look-back that was not listed will never be (the journal's premise), and
        every listed one before the first the cursor has not confirmed (unreadable,
        unhandled, or beyond one poll's batch) has been published."""
        safe = listed_at_ms - self.lookback_ms
        first = self.cursor.first_unconfirmed_ms() if self.cursor is not None else None
        if first is not None:
            safe = min(safe, first)
        self.stream_safe_ms = safe

    def note_local(self, change: Change) -> None:
        """This sidecar's own change: the poller must not report it again."""
        if self.cursor is not None:
            self.cursor.mark_seen(change.journal_key)

    # -- events ----------------------------------------------------------------

    async def event_for(self, change: Change, *, cache: bool = True) -> Event | None:
        """The stream event of *change*, fetching the entry or outcome it names."""
        if change.kind == "write":
            assert change.entity_path and change.key and change.version
            body = await self.entry_body(change.entity_path, change.key, change.version,
                                         cache=cache)
            return None if body is None else write_event(change, body)
        assert change.outcome_ref
        record = await self.offload(self.adapter.get_outcome, change.outcome_ref)
        return None if record is None else outcome_event(change, record)

    async def entry_body(self, entity_path: str, key: str, version: int, *,
                         cache: bool = True) -> bytes | None:
        """JSON of exactly *version*: from the cache, else one GET (cached if current
        and *cache*: a replay's reads are not, so a day's backlog cannot evict the
        entries agents read)."""
        cached = self.cache.get(entity_path, key, version)
        if cached is not None:
            return cached.body
        entry: MemoryEntry | None = await self.offload(
            self.adapter.read_at_version, entity_path, key, version
        )
        if entry is None:
            return None
        body = encode_entry(entry)
        if cache and version >= self.index.current(entity_path, key):
            self.cache.put(entry, body)
        return body

    async def resume(self, last_event_id: str | None, scope: str, head: int) -> Resumption:
        """How a stream resuming after *last_event_id* starts (see amfs_sidecar.replay)."""
        replay = StreamReplay(
            self.hub, self.adapter, self.replay_fetch, self.offload,
            now_ms=self.adapter.clock.now_ms,
            floor_ms=self.journal_floor_ms,
            lookback_ms=self.lookback_ms,
        )
        plan = await replay.plan(last_event_id, scope, head)
        if last_event_id is not None:
            self.metrics.count_stream_resume(plan.how)
        return plan

    def journal_floor_ms(self) -> int:
        """Journal records older than this may be gone: a resume from before it is a
        reset. The replay window, or where the lease holder's trim behind an index
        snapshot deleted, whichever is later."""
        return max(self.adapter.clock.now_ms() - self.replay_window_ms,
                   self.journal_trimmed_before_ms)

    async def replay_fetch(self, change: Change) -> Event | None:
        """:meth:`event_for`, skipping an object that is broken for good."""
        try:
            return await self.event_for(change, cache=False)
        except Exception as exc:
            if _unreadable_for_good(exc):
                logger.warning("change not streamed: its object is unreadable",
                               extra=fields(journal_key=change.journal_key, error=str(exc)))
                return None
            raise

    async def fill(self, event: Event) -> Event | None:
        """*event* with the body it was published without; ids kept."""
        try:
            fetched = await self.replay_fetch(event.change)
        except AdapterError as exc:
            raise StreamSourceFailed(str(exc)) from exc
        return None if fetched is None else dataclasses.replace(fetched, id=event.id,
                                                                seq=event.seq)


def _unreadable_for_good(exc: Exception) -> bool:
    """A broken object or name, as opposed to S3 failing to serve it (worth a retry)."""
    return isinstance(exc, AdapterError | ValueError) and not isinstance(exc, S3AccessError)
