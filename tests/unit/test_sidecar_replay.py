"""Resuming a stream: exact from the buffer, incremental and bounded from the journal."""

from __future__ import annotations

import bisect
import functools
from typing import Any

from amfs_s3.clock import StorageClock
from amfs_s3.journal import Change, JournalCursor
from amfs_s3.layout import Layout
from amfs_sidecar.event_ids import EventId, journal_position, parse_event_id
from amfs_sidecar.index import EntryIndex, ValueCache
from amfs_sidecar.metrics import SidecarMetrics
from amfs_sidecar.replay import StreamReplay
from amfs_sidecar.stream import Event, StreamHub
from amfs_sidecar.sync import Synchronizer, unfetched_event, write_event

LAYOUT = Layout()
NOW = 10_000_000
LOOKBACK = 1_000


class Journal:
    """A journal of *count* writes, one per ms from 1,000,000; counts what is read."""

    layout = LAYOUT

    def __init__(self, count: int) -> None:
        self.changes = {
            (key := LAYOUT.journal_key(1_000_000 + n, "w", n)): Change(
                key, "write", 1_000_000 + n, "w", entity_path="svc" if n % 2 else "other",
                key=f"k{n}", version=1)
            for n in range(count)
        }
        self.sorted_keys = sorted(self.changes)
        self.reads = 0  # journal records and entries fetched

    def journal_page(self, start_after: str, limit: int) -> tuple[list[str], str | None]:
        keys = self.sorted_keys
        first = bisect.bisect_right(keys, start_after)
        page = keys[first:first + limit]
        return page, (page[-1] if first + limit < len(keys) else None)

    def journal_change(self, journal_key: str) -> Change | None:
        self.reads += 1
        return self.changes[journal_key]

    def pending_journal_changes(self) -> list[Change]:
        return []

    async def fetch(self, change: Change) -> Event | None:
        self.reads += 1
        return write_event(change, b'{"key": "%s"}' % (change.key or "").encode())


async def offload(fn: Any, *args: Any) -> Any:
    return fn(*args)


def replay(hub: StreamHub, journal: Journal, batch: int = 8) -> StreamReplay:
    return StreamReplay(hub, journal, journal.fetch, offload, now_ms=lambda: NOW,
                        floor_ms=lambda: 0, lookback_ms=LOOKBACK, batch=batch, page=100)


async def test_a_journal_replay_streams_in_bounded_steps_and_never_goes_back() -> None:
    journal, hub = Journal(1000), StreamHub()
    plan = await replay(hub, journal).plan(str(journal_position(0)), "svc", hub.head)
    assert plan.reset is None and plan.missed is not None
    got: list[Event] = []
    most_ahead = 0
    async for event in plan.missed:
        if not got:
            # The first event goes out after one batch, not after the backlog.
            assert journal.reads <= 2 * 8
        got.append(event)
        # Reads beyond the records up to this one and the entries sent: what the
        # replay holds ahead of its client, at most a batch of each.
        record = int((event.change.key or "k0")[1:]) + 1
        most_ahead = max(most_ahead, journal.reads - record - len(got))
    assert most_ahead <= 2 * 8
    assert [e.change.key for e in got] == [f"k{n}" for n in range(1, 1000, 2)]
    positions = [parse_event_id(e.id, LAYOUT, LOOKBACK) for e in got]
    assert all(p is not None and p.epoch == "0" * 12 for p in positions)
    ms = [p.ms for p in positions if p is not None]
    assert ms == sorted(ms) and ms[-1] == 1_000_999 - LOOKBACK


async def test_a_resume_from_a_journal_position_starts_at_its_time() -> None:
    journal, hub = Journal(100), StreamHub()
    plan = await replay(hub, journal).plan(str(journal_position(1_000_090)), "*", hub.head)
    assert plan.missed is not None
    assert [e.change.key async for e in plan.missed] == [f"k{n}" for n in range(90, 100)]


async def test_a_buffer_resume_is_exact_and_fetches_bodies_the_buffer_let_go() -> None:
    journal = Journal(10)
    hub = StreamHub(buffer_bytes=0)  # no bodies kept: every one is fetched again
    changes = list(journal.changes.values())
    stamped = [hub.publish(unfetched_event(c)) for c in changes]
    after = stamped[3]
    assert after is not None
    plan = await replay(hub, journal).plan(after.id, "*", hub.head)
    assert plan.missed is not None
    missed = [e async for e in plan.missed]
    assert [e.seq for e in missed] == list(range(5, 11))
    assert [e.id for e in missed] == [e.id for e in stamped[4:] if e is not None]
    assert all(e.data is not None for e in missed)
    assert journal.reads == 6  # the bodies only: the journal was not listed


async def test_ids_that_cannot_be_resumed_get_a_reread_reset() -> None:
    journal, hub = Journal(3), StreamHub()
    hub.publish(unfetched_event(next(iter(journal.changes.values()))))
    expired = functools.partial(StreamReplay, hub, journal, journal.fetch, offload,
                                now_ms=lambda: NOW, lookback_ms=LOOKBACK)
    cases = {
        "bogus": "invalid",
        str(journal_position(NOW + 60_000)): "future",
        str(EventId(hub.epoch, 2, 0)): "future",
        str(journal_position(5)): "expired",
    }
    for last_event_id, reason in cases.items():
        plan = await expired(floor_ms=lambda: 1_000).plan(last_event_id, "*", hub.head)
        assert plan.missed is None and plan.reset is not None
        assert b'"reason": "%s"' % reason.encode() in plan.reset
        assert plan.reset.startswith(b"id: %s\n" % hub.head_id().encode())


# -- the resume point the poller gives the ids ---------------------------------------


class _Adapter:
    """What the synchronizer reads of an adapter before it polls."""

    layout = LAYOUT
    pending_journal_records = 0
    held_journal_records = 0

    def __init__(self) -> None:
        self.clock = StorageClock(local=lambda: NOW / 1000)


def test_the_resume_point_stops_before_any_record_a_poll_left_unread() -> None:
    hub = StreamHub()
    sync = Synchronizer(_Adapter(), EntryIndex(), ValueCache(1 << 20), hub,  # type: ignore[arg-type]
                        SidecarMetrics(), offload, poll_interval=1.0, resync_interval=60.0,
                        lookback_ms=LOOKBACK)
    assert hub.position() == 0  # before the first sync nothing is promised
    cursor = sync.cursor = JournalCursor.starting_now(LAYOUT, NOW, lookback_ms=LOOKBACK)
    sync._advance_safe_point(NOW)
    assert hub.position() == NOW - LOOKBACK  # what the listing covered
    # Records listed but not confirmed (unreadable, unhandled, past one poll's
    # batch) hold the point before the first of them: they come at a later poll,
    # after ids were issued.
    keys = [LAYOUT.journal_key(NOW - ms, "w", n) for n, ms in enumerate((1_800, 1_500, 1_200))]
    assert cursor.pending(keys) == keys
    sync._advance_safe_point(NOW)
    assert hub.position() == NOW - 1_800
    cursor.confirm(keys[0])
    sync._advance_safe_point(NOW)
    assert hub.position() == NOW - 1_500
    for key in keys[1:]:
        cursor.confirm(key)
    sync._advance_safe_point(NOW)
    assert hub.position() == NOW - LOOKBACK
    published = hub.publish(unfetched_event(Change(keys[2], "write", NOW - 1_200, "w",
                                                   entity_path="svc", key="k", version=1)))
    assert published is not None and parse_event_id(published.id, LAYOUT, LOOKBACK) == EventId(
        hub.epoch, 1, NOW - LOOKBACK)
