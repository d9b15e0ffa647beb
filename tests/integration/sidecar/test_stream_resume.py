"""Resume is exact: sidecars on one bucket, writes interleaved through them, a client
resuming from a later event's id receives every acknowledged write after it.

A sidecar streams its own writes at once and the others' at its next poll, so
its delivery order is not the journal's. Resumed on the sidecar that issued the
id, the stream continues exactly (its buffer); on another sidecar it replays the
journal from the id's time: a duplicate may come, with the same (entity, key,
version), a gap may not.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from amfs_s3.config import S3Settings
from amfs_s3.journal import Change
from amfs_s3.layout import Layout
from tests.fixtures.sidecar import RunningSidecar, SidecarFactory

from .sse import SSE, EventReader
from .test_api_entries import post
from .test_stream import body, open_stream

Name = tuple[str, str, int]


def name(event: SSE) -> Name:
    return event.data["entity_path"], event.data["key"], event.data["version"]


async def collect(events: EventReader, wanted: set[Name], deadline: float) -> list[SSE]:
    """Events until every name in *wanted* has come (next() fails past *deadline*)."""
    got: list[SSE] = []
    while not wanted <= {name(e) for e in got if e.event == "write"}:
        got.append(await events.next(timeout=deadline))
    return got


async def test_a_resumed_stream_receives_every_write_after_its_id_from_any_sidecar(
    sidecar_factory: SidecarFactory, s3_settings: S3Settings,
) -> None:
    settings = s3_settings.model_copy(update={"resync_interval": 3600.0})
    a, b, c = (sidecar_factory(n, settings=settings) for n in ("a", "b", "c"))
    deadline = settings.poll_interval + 2.0
    acked: list[Name] = []
    async with a.session() as sa, b.session() as sb, c.session() as sc:
        async with open_stream(sa, "team") as events:
            for n in range(6):
                # B's write first, A's right after: A streams its own before B's.
                for s, who in ((sb, "b"), (sa, "a")):
                    status, written = await post(s, "/api/v1/entries", body("team", f"{who}{n}", n))
                    assert status == 201
                    acked.append((written["entity_path"], written["key"], written["version"]))
            delivered = await collect(events, set(acked), deadline)
        assert sorted(name(e) for e in delivered) == sorted(acked)  # each once, live
        order = [name(e) for e in delivered]
        assert order != acked  # the reordering this test is about did happen
        # Resume from a later event: one of A's own, delivered ahead of B's older one.
        cut = next(i for i, e in enumerate(delivered)
                   if i > 2 and e.data["key"].startswith("a")
                   and any(n not in order[: i + 1] for n in acked[: acked.index(order[i])]))
        before, after = set(order[: cut + 1]), order[cut + 1:]
        resume_from = delivered[cut].id
        # Writes acknowledged while nobody watches, through all three.
        for s, who in ((sb, "b"), (sc, "c"), (sa, "a")):
            status, written = await post(s, "/api/v1/entries", body("team", f"late-{who}", 0))
            assert status == 201
            after.append((written["entity_path"], written["key"], written["version"]))

        # On A, the sidecar that issued the id: exactly what followed it.
        async with open_stream(sa, "team", last_event_id=resume_from) as events:
            got = await collect(events, set(after), deadline)
            _, sentinel = await post(sa, "/api/v1/entries", body("team", "sentinel-a", 0))
            assert name(await events.next(timeout=deadline)) == (
                "team", "sentinel-a", sentinel["version"])  # nothing came twice
        assert sorted(name(e) for e in got) == sorted(after)
        after.append(("team", "sentinel-a", sentinel["version"]))

        # On B and C, which never issued it: the journal from its time. Every write
        # after it comes; anything else is a duplicate of what the client had.
        for s, who in ((sb, "b"), (sc, "c")):
            async with open_stream(s, "team", last_event_id=resume_from) as events:
                got = await collect(events, set(after), deadline)
            names = [name(e) for e in got]
            assert set(after) <= set(names)
            assert set(names) - set(after) <= before, who
            assert all(e.data == json_of(got, name(e)) for e in got)  # a duplicate is the same
    assert a.metric("amfs_sidecar_stream_resumes_total", how="buffer") == 1
    assert b.metric("amfs_sidecar_stream_resumes_total", how="journal") == 1


def json_of(events: list[SSE], wanted: Name) -> Any:
    return next(e.data for e in events if name(e) == wanted)


# -- a replay from far back starts at once and holds a bounded amount ----------------

# The replay reads 16 records and 16 entries per step: the first event is out
# before the fetches reach this many, whatever the backlog.
FIRST_EVENT_WITHIN_GETS = 40


def write_backlog(settings: S3Settings, s3_client: Any, count: int) -> list[Name]:
    """*count* journaled writes made straight to S3, as another writer would."""
    layout = Layout()
    start_ms = int(time.time() * 1000)  # moto's clock is this machine's

    def put(n: int) -> Name:
        entry = {"entity_path": "bulk", "key": f"k{n:04d}", "version": 1, "value": n,
                 "provenance": {"agent_id": "bulk", "session_id": "s",
                                "written_at": "2026-01-01T00:00:00Z"}}
        s3_client.put_object(Bucket=settings.bucket, Key=layout.version_key("bulk", f"k{n:04d}", 1),
                             Body=json.dumps(entry).encode())
        key = layout.journal_key(start_ms + n, "bulk-writer", n)
        change = Change(key, "write", start_ms + n, "bulk-writer", entity_path="bulk",
                        key=f"k{n:04d}", version=1)
        s3_client.put_object(Bucket=settings.bucket, Key=key,
                             Body=json.dumps(change.to_record()).encode())
        return "bulk", f"k{n:04d}", 1

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(put, range(count)))


class GetGate:
    """Counts the sidecar's GetObject requests and holds every one past *limit*
    until released: an event that arrives meanwhile needed no more than that."""

    def __init__(self, running: RunningSidecar, limit: int) -> None:
        self.limit = limit
        self.count = itertools.count(1)
        self.seen = 0
        self.open = threading.Event()
        assert running.sidecar.adapter is not None
        running.sidecar.adapter.client.meta.events.register(
            "before-send.s3.GetObject", self._before_send)

    def _before_send(self, **_: Any) -> None:
        self.seen = next(self.count)
        if self.seen > self.limit:
            self.open.wait(60)  # bounded: a test that fails must not hang


@pytest.mark.parametrize("backlog", [
    200,
    # The size of the report; a minute on moto.
    pytest.param(1000, marks=pytest.mark.slow),
])
async def test_a_replay_from_far_back_sends_its_first_event_before_reading_the_backlog(
    sidecar_factory: SidecarFactory, s3_settings: S3Settings, s3_client: Any, backlog: int,
) -> None:
    settings = s3_settings.model_copy(update={"resync_interval": 3600.0})
    first = sidecar_factory("first", settings=settings)
    async with first.session() as s, open_stream(s, "bulk") as events:
        await post(s, "/api/v1/entries", body("bulk", "start", 0))
        oldest = (await events.next()).id
    written = write_backlog(settings, s3_client, backlog)
    # Another pod (another epoch): the resume must come from the journal. Its own
    # poller looks back only 100 ms, so it does not read the backlog itself.
    other = sidecar_factory("other", settings=settings, lookback_ms=100)
    gate = GetGate(other, FIRST_EVENT_WITHIN_GETS)
    try:
        async with other.session() as s, open_stream(s, "bulk", last_event_id=oldest) as events:
            first_event = await events.next(timeout=30)
            assert first_event.event == "write" and gate.seen <= FIRST_EVENT_WITHIN_GETS + 8
            gate.open.set()
            got = [first_event] + await collect(events, set(written) - {name(first_event)},
                                                deadline=10)
    finally:
        gate.open.set()
    had = ("bulk", "start", 1)
    # All of it, in journal order, once; before it at most the event the client had.
    assert [name(e) for e in got if name(e) != had] == written
    assert [name(e) for e in got].count(had) <= 1
