"""SSE event encoding and the fan-out hub."""

from __future__ import annotations

import json

from amfs_sidecar.stream import Event, StreamHub, reset_event


def test_event_encoding_is_sse() -> None:
    event = Event("amfs/default/journal/1-w-000001.json", "write", b'{"a": 1}', ("svc",))
    assert event.encode() == (
        b"id: amfs/default/journal/1-w-000001.json\nevent: write\ndata: {\"a\": 1}\n\n"
    )


def test_scopes_are_subtrees() -> None:
    event = Event("i", "write", b"{}", ("a/b",))
    assert event.concerns("*") and event.concerns("") and event.concerns("a")
    assert event.concerns("a/b") and not event.concerns("a/bc") and not event.concerns("a/b/c")
    orphan = Event("o", "outcome", b"{}", ())
    assert orphan.concerns("*") and not orphan.concerns("a")


async def test_hub_delivers_once_per_id_to_matching_streams() -> None:
    hub = StreamHub()
    everything, scoped = hub.subscribe("*"), hub.subscribe("svc")
    assert len(hub) == 2 and hub.wants(("svc/x",)) and hub.wants(("other",))
    event = Event("1", "write", b"{}", ("svc/x",))
    assert hub.publish(event) is True
    assert hub.publish(event) is False  # the poller finding an id the API published
    hub.publish(Event("2", "write", b"{}", ("other",)))
    assert [everything.queue.get_nowait().id for _ in range(2)] == ["1", "2"]  # type: ignore[union-attr]
    assert scoped.queue.get_nowait().id == "1"  # type: ignore[union-attr]
    assert scoped.queue.empty()
    hub.unsubscribe(scoped)
    hub.unsubscribe(everything)
    assert len(hub) == 0 and not hub.wants(("svc/y",))


async def test_a_slow_stream_is_closed_instead_of_buffering_forever() -> None:
    hub = StreamHub(max_queue_events=3)
    slow = hub.subscribe("*")
    for i in range(10):
        hub.publish(Event(str(i), "write", b"{}", ("a",)))
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
        hub.publish(Event(f"id-{i}", "write", b"x" * 300, ("a",)))
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
    raw = reset_event("amfs/default/journal/1-w-000007.json", "overflow")
    assert raw.startswith(b"event: reset\ndata: ") and raw.endswith(b"\n\n")
    assert b"\nid:" not in raw and not raw.startswith(b"id:")
    data = json.loads(raw.split(b"data: ", 1)[1])
    assert data["last_event_id"] == "amfs/default/journal/1-w-000007.json"
    assert data["reason"] == "overflow" and "Last-Event-ID" in data["detail"]
