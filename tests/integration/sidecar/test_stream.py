"""Watch streams (SSE): events, subtree filters, resume with Last-Event-ID, heartbeats."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from tests.fixtures.sidecar import RunningSidecar

from .sse import EventReader
from .test_api_entries import post

# {epoch}-{seq}-{ms}: see amfs_sidecar.event_ids.
EVENT_ID = re.compile(r"[0-9a-f]{12}-[0-9]{12}-[0-9]{13}")


@asynccontextmanager
async def open_stream(s: Any, scope: str = "*", last_event_id: str | None = None
                      ) -> AsyncIterator[EventReader]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    async with s.get("/api/v1/stream", params={"entity_path": scope}, headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        reader = EventReader(resp)
        await reader.comment("connected")
        yield reader


def body(entity: str, key: str, value: Any = "v") -> dict[str, Any]:
    return {"entity_path": entity, "key": key, "value": value, "agent_id": "agent-a"}


async def test_writes_and_outcomes_arrive_as_events(sidecar: RunningSidecar) -> None:
    async with sidecar.session() as s, open_stream(s) as events:
        _, first = await post(s, "/api/v1/entries", body("svc", "a", 1))
        _, second = await post(s, "/api/v1/entries", body("svc", "b", 2))
        got = await events.take(2)
        assert [(e.event, e.data) for e in got] == [("write", first), ("write", second)]
        assert all(e.id and EVENT_ID.fullmatch(e.id) for e in got)
        assert got[0].id < got[1].id  # type: ignore[operator]  # delivery order

        _, committed = await post(s, "/api/v1/outcomes", {
            "outcome_ref": "run-1", "outcome_type": "success", "causal_entry_keys": ["svc/a"],
            "agent_id": "agent-a"})
        outcome, update = await events.take(2)
    assert outcome.event == "outcome" and outcome.data["outcome_ref"] == "run-1"
    assert update.event == "write" and update.data == committed["entries"][0]


async def test_stream_filters_by_subtree(sidecar: RunningSidecar) -> None:
    async with sidecar.session() as s, open_stream(s, "svc/api") as events:
        for entity, key in [("svc/api", "x"), ("svc/apix", "no"), ("svc/api/v2", "z"),
                            ("other", "no"), ("svc/api", "end")]:
            await post(s, "/api/v1/entries", body(entity, key))
        got = await events.take(3)
    assert [(e.data["entity_path"], e.data["key"]) for e in got] == [
        ("svc/api", "x"), ("svc/api/v2", "z"), ("svc/api", "end")]


async def test_resume_with_last_event_id_replays_what_was_missed_once(
    sidecar: RunningSidecar,
) -> None:
    async with sidecar.session() as s:
        async with open_stream(s) as events:
            for key in ("a", "b"):
                await post(s, "/api/v1/entries", body("svc", key))
            a, b = await events.take(2)
        # Disconnected: these two happen while nobody watches.
        for key in ("c", "d"):
            await post(s, "/api/v1/entries", body("svc", key))

        async with open_stream(s, last_event_id=b.id) as events:
            missed = await events.take(2)
            assert [e.data["key"] for e in missed] == ["c", "d"]
            await post(s, "/api/v1/entries", body("svc", "e"))
            # The next event is the new write: nothing from before is sent twice.
            live = await events.next()
            assert live.data["key"] == "e"

        async with open_stream(s, last_event_id=a.id) as events:
            replay = await events.take(4)
            assert [e.data["key"] for e in replay] == ["b", "c", "d", "e"]
            assert [e.id for e in replay] == sorted(e.id for e in replay)  # type: ignore[type-var]

        async with open_stream(s, "svc/other", last_event_id=a.id) as events:
            await post(s, "/api/v1/entries", body("svc/other", "only"))
            assert (await events.next()).data["key"] == "only"


async def test_idle_streams_get_heartbeats(sidecar: RunningSidecar) -> None:
    async with sidecar.session() as s, open_stream(s) as events:
        # The fixture's heartbeat is 0.5 s; a proxy's idle timeout would be far longer.
        await events.comment("heartbeat", timeout=5)
        await post(s, "/api/v1/entries", body("svc", "after-idle"))
        assert (await events.next()).data["key"] == "after-idle"


async def test_an_id_that_cannot_be_resumed_gets_a_reset_and_the_stream_goes_on(
    sidecar: RunningSidecar,
) -> None:
    future = f"{'0' * 12}-{0:012d}-{9_999_999_999_999:013d}"
    async with sidecar.session() as s:
        for bad, reason in [("bogus", "invalid"), (future, "future")]:
            async with open_stream(s, last_event_id=bad) as events:
                reset = await events.next()
                assert (reset.event, reset.data["reason"], reset.data["reread"]) == (
                    "reset", reason, True)
                assert "re-read" in reset.data["detail"]
                # The reset's id is the client's new resume point: valid, and now.
                assert reset.id == reset.data["last_event_id"] and EVENT_ID.fullmatch(reset.id)
                await post(s, "/api/v1/entries", body("svc", f"after-{reason}"))
                assert (await events.next()).data["key"] == f"after-{reason}"
        # An id from before the journal is kept: the same.
        async with open_stream(s, last_event_id=f"{'0' * 12}-{0:012d}-{1:013d}") as events:
            assert (await events.next()).data["reason"] == "expired"
        # And an id of this sidecar's own stream that it never issued.
        head = reset.id.split("-")  # type: ignore[union-attr]
        ahead = f"{head[0]}-{int(head[1]) + 5:012d}-{head[2]}"
        async with open_stream(s, last_event_id=ahead) as events:
            assert (await events.next()).data["reason"] == "future"
    for how, count in [("reset_invalid", 1), ("reset_future", 2), ("reset_expired", 1)]:
        assert sidecar.metric("amfs_sidecar_stream_resumes_total", how=how) == count, how


async def test_bad_stream_requests_are_400(sidecar: RunningSidecar) -> None:
    async with sidecar.session() as s, s.get("/api/v1/stream",
                                             params={"entity_path": "a//b"}) as response:
        assert response.status == 400
        assert "empty segment" in (await response.json())["detail"]
