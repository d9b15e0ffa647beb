"""SSE event encoding, the fan-out hub, its ids and its resume buffer."""

from __future__ import annotations

import json

from amfs_s3.journal import Change
from amfs_s3.layout import Layout
from amfs_sidecar.event_ids import JOURNAL_EPOCH, EventId, parse_event_id
from amfs_sidecar.stream import Event, StreamHub, reset_event

LAYOUT = Layout()


def change(n: int, entity: str = "a") -> Change:
    return Change(LAYOUT.journal_key(1_000 + n, "w", n), "write", 1_000 + n, "w",
                  entity_path=entity, key=f"k{n}", version=1)


def event(n: int, entity: str = "a", data: bytes | None = b"{}") -> Event:
    return Event(change(n, entity), "write", data, (entity,))


def test_event_encoding_is_sse() -> None:
    stamped = Event(change(1), "write", b'{"a": 1}', ("svc",), id="e-1")
    assert stamped.encode() == b"id: e-1\nevent: write\ndata: {\"a\": 1}\n\n"


def test_scopes_are_subtrees() -> None:
    write = event(1, "a/b")
    assert write.concerns("*") and write.concerns("") and write.concerns("a")
    assert write.concerns("a/b") and not write.concerns("a/bc") and not write.concerns("a/b/c")
    orphan = Event(change(2), "outcome", b"{}", ())
    assert orphan.concerns("*") and not orphan.concerns("a")
    unfetched = Event(change(3), "outcome", None, None)  # citations unknown: fetch, then ask
    assert unfetched.concerns("a")


async def test_hub_delivers_once_per_change_to_matching_streams_in_id_order() -> None:
    hub = StreamHub(epoch="0123456789ab")
    hub.position = lambda: 42
    everything, scoped = hub.subscribe("*"), hub.subscribe("svc")
    assert len(hub) == 2 and hub.wants(("svc/x",)) and hub.wants(("other",))
    first = event(1, "svc/x")
    published = hub.publish(first)
    assert published is not None and published.id == "0123456789ab-000000000001-0000000000042"
    assert hub.publish(first) is None  # the poller finding a change the API published
    hub.publish(event(2, "other"))
    got = [everything.queue.get_nowait() for _ in range(2)]
    assert [e.seq for e in got] == [1, 2]  # type: ignore[union-attr]
    assert got[0].id < got[1].id  # type: ignore[union-attr,operator]
    assert scoped.queue.get_nowait().seq == 1  # type: ignore[union-attr]
    assert scoped.queue.empty()
    hub.unsubscribe(scoped)
    hub.unsubscribe(everything)
    assert len(hub) == 0 and not hub.wants(("svc/y",))


def test_the_resume_buffer_is_bounded_in_events_and_in_body_bytes() -> None:
    hub = StreamHub(buffer_events=5, buffer_bytes=250)
    for n in range(1, 9):
        hub.publish(event(n, data=b"x" * 100))
    events, body_bytes = hub.buffered
    assert (events, body_bytes) == (5, 200)  # 4..8 kept; only the two newest bodies
    assert hub.since(2) is None  # older than the buffer: the journal replays that
    after = hub.since(3)
    assert after is not None and [e.seq for e in after] == [4, 5, 6, 7, 8]
    assert [e.data is not None for e in after] == [False, False, False, True, True]
    assert hub.since(8) == [] and hub.since(9) is None


def test_event_ids_parse_and_old_journal_key_ids_resume_from_the_look_back() -> None:
    mine = EventId("0123456789ab", 7, 1_700_000_000_000)
    assert parse_event_id(str(mine), LAYOUT, 30_000) == mine
    legacy = parse_event_id(LAYOUT.journal_key(1_700_000_000_000, "w", 3), LAYOUT, 30_000)
    assert legacy == EventId(JOURNAL_EPOCH, 0, 1_700_000_000_000 - 30_000)
    for bad in ("bogus", "0123456789ab-7-1", "amfs/other/journal/1-w-000001.json", str(mine) + "x"):
        assert parse_event_id(bad, LAYOUT, 30_000) is None


async def test_a_slow_stream_is_closed_instead_of_buffering_forever() -> None:
    hub = StreamHub(max_queue_events=3)
    slow = hub.subscribe("*")
    for i in range(10):
        hub.publish(event(i))
    assert slow.overflowed
    items = [slow.queue.get_nowait() for _ in range(slow.queue.qsize())]
    assert items[-1] is None  # the end-of-stream marker made it in


async def test_close_all_ends_every_stream_and_later_ones_at_once() -> None:
    hub = StreamHub()
    sub = hub.subscribe("*")
    hub.close_all()
    assert sub.queue.get_nowait() is None
    late = hub.subscribe("*")
    assert late.queue.get_nowait() is None


async def test_a_stream_is_bounded_in_bytes_and_drops_its_queue_when_it_overflows() -> None:
    hub = StreamHub(max_queue_events=1000, max_queue_bytes=1000)
    slow = hub.subscribe("*")
    fast = hub.subscribe("*")
    for i in range(4):
        hub.publish(event(i, data=b"x" * 252))  # 320 bytes with its id
        taken = fast.queue.get_nowait()
        assert taken is not None
        fast.taken(taken)
        if i == 2:
            assert not slow.overflowed and slow.queued_bytes > 900
    # The fourth event took it past 1000 bytes.
    assert slow.overflowed and slow.queued_bytes == 0
    assert slow.queue.get_nowait() is None and slow.queue.empty()  # memory released at once
    assert not fast.overflowed  # a stream that keeps up is not affected


def test_reset_event_names_where_to_resume_and_keeps_the_clients_last_id() -> None:
    raw = reset_event("0123456789ab-000000000007-0000000000042", "overflow")
    assert raw.startswith(b"event: reset\ndata: ") and raw.endswith(b"\n\n")
    assert b"\nid:" not in raw and not raw.startswith(b"id:")
    data = json.loads(raw.split(b"data: ", 1)[1])
    assert data["last_event_id"] == "0123456789ab-000000000007-0000000000042"
    assert data["reason"] == "overflow" and "Last-Event-ID" in data["detail"]
    assert data["reread"] is False


def test_a_reread_reset_moves_the_clients_last_id_to_now() -> None:
    raw = reset_event("0123456789ab-000000000007-0000000000042", "expired", reread=True)
    assert raw.startswith(b"id: 0123456789ab-000000000007-0000000000042\nevent: reset\n")
    data = json.loads(raw.split(b"data: ", 1)[1])
    assert data["reread"] is True and "re-read" in data["detail"]
