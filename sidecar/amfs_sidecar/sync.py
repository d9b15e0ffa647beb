"""Keeping the index in step with S3 and feeding the watch streams.

The first full sync (bucket check, conditional-write probe, a scan of
``entries/``, an outcome count) makes the sidecar ready. After it, a journal
poll every ``poll_interval`` seconds costs about one LIST and turns other
writers' changes into index updates and stream events; a full rescan every
``resync_interval`` seconds catches writers that wrote no journal.
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

from amfs_s3.adapter import S3Adapter
from amfs_s3.exceptions import AdapterError, S3AccessError
from amfs_s3.journal import DEFAULT_LOOKBACK_MS, Change, JournalCursor
from amfs_sidecar.index import EntryIndex, ValueCache, encode_entry
from amfs_sidecar.logs import fields
from amfs_sidecar.metrics import SidecarMetrics
from amfs_sidecar.replay import DEFAULT_REPLAY_WINDOW_MS, StreamReplay, streamable
from amfs_sidecar.stream import Event, Resumption, StreamHub, StreamSourceFailed

logger = logging.getLogger(__name__)

T = TypeVar("T")
Offload = Callable[..., Awaitable[Any]]

MAX_RETRY_SECONDS = 30.0


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
        self.cursor: JournalCursor | None = None
        self.bucket_reachable = False
        self.conditional_writes: bool | None = None
        self.last_error: str | None = None
        self.last_poll_success: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._future_records_counted = 0
        metrics.bind_storage_clock_offset(lambda: adapter.clock.offset_seconds)
        # Storage time before which every journal record has reached the hub:
        # 0 until the first sync (nothing is promised before the cursor exists).
        self.stream_safe_ms = 0
        self.replay_window_ms = replay_window_ms
        hub.position = lambda: self.stream_safe_ms
        metrics.bind_pending_journal_records(lambda: adapter.pending_journal_records)

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
                    await self.resync()
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
        """Bucket check, probe, full scan: after this the sidecar is ready."""
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
        # The cursor starts before the scan, so a change made during the scan
        # is either in the scan or in the first poll (observe() is idempotent).
        clock = self.adapter.clock
        self.cursor = JournalCursor.starting_now(
            self.adapter.layout, clock.now_ms(), lookback_ms=self.lookback_ms, clock=clock.now_ms
        )
        self.stream_safe_ms = self.cursor.high_water_ms - self.lookback_ms
        await self.resync()
        self.index.synced = True
        self.last_error = None
        logger.info("first sync complete", extra=fields(
            entries=self.index.count("entries"), versions=self.index.count("versions"),
            outcomes=self.index.count("outcomes"), conditional_writes=self.conditional_writes,
        ))

    async def resync(self) -> None:
        """Full scan of entries/ (LISTs only) and an outcome count."""
        mark = self.index.mark()
        scanned = await self.offload(self.adapter.scan_versions)
        newer = self.index.replace(scanned, since=mark)
        self.index.set_outcomes(await self.offload(self.adapter.count_outcomes))
        if newer and self.index.synced:
            # Only writers that skip the journal get here; they have no event id.
            logger.info("resync found changes the journal did not carry",
                        extra=fields(count=len(newer)))

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
            if change.kind == "outcome" and change.outcome_ref:
                self.index.add_outcome()  # counted once: only when confirmed
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
        reset. The lifecycle rule's window; whatever else deletes journal records
        (a trim behind an index snapshot) must raise it to where it deleted."""
        return self.adapter.clock.now_ms() - self.replay_window_ms

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
