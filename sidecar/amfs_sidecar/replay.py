"""Resuming a stream from its ``Last-Event-ID``: exactly from the buffer, else
from the journal, else a clear reset. Incremental: bounded memory, first event
after one batch.

- An id of this sidecar's epoch still in its buffer: the buffered events after
  it, in delivery order; nothing twice, nothing skipped.
- An id of another epoch (another pod, this sidecar before a restart), one of
  this epoch older than the buffer, or a journal position: the journal from the
  id's time. It may repeat an event the client has (same entity, key and
  version); it cannot skip one, because the id's time is one before which
  every record had been delivered.
- An id from the future, older than the journal is kept, or not an id at all:
  ``event: reset`` with ``reread``, and the stream goes on live from now.

A replay holds one LIST page of keys (the first one small, so the first event
does not wait for a full page) and one batch of records and entries at a time
(``REPLAY_BATCH``), so its memory does not grow with the backlog.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Protocol

from amfs_s3.exceptions import AdapterError
from amfs_s3.journal import FUTURE_TOLERANCE_MS, Change
from amfs_s3.layout import Layout, is_within
from amfs_sidecar.event_ids import EventId, journal_position, parse_event_id
from amfs_sidecar.stream import Event, Resumption, StreamHub, StreamSourceFailed, reset_event

# Records and entries fetched concurrently per step: the replay's memory is
# this many entries (at most 1 MiB each) plus one page of keys.
REPLAY_BATCH = 16
REPLAY_PAGE = 1000
# The journal is expired by a lifecycle rule of at least a day (README): a day
# minus an hour of margin is what a replay can count on finding.
DEFAULT_REPLAY_WINDOW_MS = 23 * 3600 * 1000


def streamable(change: Change) -> bool:
    """Whether *change* names what an event needs (a record may be malformed)."""
    if change.kind == "write":
        return bool(change.entity_path and change.key and change.version)
    return change.kind == "outcome" and bool(change.outcome_ref)


class JournalReader(Protocol):
    """What a replay reads: the adapter's journal pages and records."""

    layout: Layout

    def journal_page(self, start_after: str, limit: int) -> tuple[list[str], str | None]: ...

    def journal_change(self, journal_key: str) -> Change | None: ...

    def pending_journal_changes(self) -> list[Change]: ...


Fetch = Callable[[Change], Awaitable[Event | None]]
Offload = Callable[..., Awaitable[Any]]


class StreamReplay:
    """Plans how one stream starts, and reads what it missed."""

    def __init__(self, hub: StreamHub, reader: JournalReader, fetch: Fetch, offload: Offload,
                 *, now_ms: Callable[[], int], floor_ms: Callable[[], int],
                 lookback_ms: int, batch: int = REPLAY_BATCH,
                 page: int = REPLAY_PAGE) -> None:
        self.hub = hub
        self.reader = reader
        self.fetch = fetch
        self.offload = offload
        self.now_ms = now_ms
        self.floor_ms = floor_ms  # records before this may have been deleted
        self.lookback_ms = lookback_ms
        self.batch = batch
        self.page = page

    async def plan(self, last_event_id: str | None, scope: str, head: int) -> Resumption:
        if last_event_id is None:
            return Resumption()
        position = parse_event_id(last_event_id, self.reader.layout, self.lookback_ms)
        if position is None:
            shown = last_event_id if len(last_event_id) <= 80 else last_event_id[:80] + "..."
            return self._reset("invalid", f"Last-Event-ID {shown!r} is not an event id "
                                          "of this memory")
        if position.epoch == self.hub.epoch:
            if position.seq > head:
                return self._reset("future", f"Last-Event-ID {last_event_id!r} is ahead of "
                                             "this sidecar's stream")
            buffered = self.hub.since(position.seq)
            if buffered is not None:
                return Resumption(missed=self._from_buffer(buffered[: head - position.seq],
                                                           scope), how="buffer")
        if position.ms > self.now_ms() + FUTURE_TOLERANCE_MS:
            return self._reset("future", f"Last-Event-ID {last_event_id!r} names a time ahead "
                                         "of the storage's clock")
        if position.ms < self.floor_ms():
            return self._reset("expired", f"Last-Event-ID {last_event_id!r} is older than the "
                                          "journal is kept")
        resumption = Resumption(how="journal")
        # Live events can repeat only records at or after where the poller stood
        # at the subscription: only those are remembered. An old-style id is the
        # key of the record the client had: that one at least is not sent again.
        had = last_event_id if position.journal_only and "/" in last_event_id else None
        if had is not None:
            resumption.overlap.add(had)  # nor live, by a poller that has not seen it yet
        resumption.missed = self._from_journal(position, scope, resumption.overlap,
                                               remember_from=self.hub.position(), had=had)
        return resumption

    def _reset(self, reason: str, why: str) -> Resumption:
        detail = (f"{why}: re-read the entries you watch (GET them); this stream continues "
                  "with every change from now on")
        now = self.hub.head_id()
        return Resumption(reset=reset_event(now, reason, reread=True, detail=detail),
                          reset_id=now, how=f"reset_{reason}")

    # -- the buffer --------------------------------------------------------------

    async def _from_buffer(self, events: list[Event], scope: str) -> AsyncIterator[Event]:
        for start in range(0, len(events), self.batch):
            step = events[start:start + self.batch]
            filled = await self._gather(self._filled(e) for e in step if e.concerns(scope))
            for event in filled:
                if event is not None and event.concerns(scope):
                    yield event

    async def _filled(self, event: Event) -> Event | None:
        if event.data is not None:
            return event
        fetched = await self.fetch(event.change)
        return None if fetched is None else dataclasses.replace(
            fetched, id=event.id, seq=event.seq)

    # -- the journal -------------------------------------------------------------

    async def _from_journal(self, since: EventId, scope: str, overlap: set[str],
                            remember_from: int, had: str | None = None
                            ) -> AsyncIterator[Event]:
        layout = self.reader.layout
        position = since.ms
        # This sidecar's own records that S3 has not taken yet are in no listing.
        pending = await self.offload(self.reader.pending_journal_changes)
        async for event in self._events(pending, scope):
            yield dataclasses.replace(event, id=str(journal_position(position)))
        start_after: str | None = layout.journal_start_after(since.ms)
        # The first page is small so the first event does not wait for a full
        # LIST; pages then double up to the full size, to keep the LISTs few.
        size = min(2 * self.batch, self.page)
        while start_after is not None:
            keys, start_after = await self.offload(self.reader.journal_page, start_after, size)
            size = min(2 * size, self.page)
            for start in range(0, len(keys), self.batch):
                step = [key for key in keys[start:start + self.batch] if key != had]
                changes = await self._gather(
                    self.offload(self.reader.journal_change, key) for key in step)
                async for event in self._events([c for c in changes if c is not None], scope):
                    name = layout.parse_journal_key(event.key)
                    ms = name.ms if name is not None else position
                    # Every record before this one's time minus the look-back has
                    # been listed, so a client resuming from here misses none.
                    position = max(position, min(ms, self.now_ms()) - self.lookback_ms)
                    if ms >= remember_from:
                        overlap.add(event.key)
                    yield dataclasses.replace(event, id=str(journal_position(position)))

    async def _events(self, changes: list[Change], scope: str) -> AsyncIterator[Event]:
        wanted = [c for c in changes if streamable(c)
                  and (c.kind == "outcome" or is_within(c.entity_path or "", scope))]
        for start in range(0, len(wanted), self.batch):
            fetched = await self._gather(self.fetch(c) for c in wanted[start:start + self.batch])
            for event in fetched:
                if event is not None and event.concerns(scope):
                    yield event

    @staticmethod
    async def _gather(steps: Iterable[Awaitable[Any]]) -> list[Any]:
        try:
            return list(await asyncio.gather(*steps))
        except AdapterError as exc:
            raise StreamSourceFailed(str(exc)) from exc
