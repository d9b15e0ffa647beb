"""Two sidecars (two pods) on one bucket see each other's writes within poll interval + 2 s."""

from __future__ import annotations

from typing import Any

from tests.fixtures.sidecar import SidecarFactory, await_until

from .test_api_entries import get, post
from .test_stream import EVENT_ID, body, open_stream


async def test_each_sidecar_sees_the_others_writes_through_reads_and_streams(
    sidecar_factory: SidecarFactory, s3_settings: Any
) -> None:
    left, right = sidecar_factory("left"), sidecar_factory("right")
    deadline = s3_settings.poll_interval + 2.0
    async with left.session() as ls, right.session() as rs:
        async with open_stream(rs, "shared") as right_events, open_stream(ls, "shared") as \
                left_events:
            status, written = await post(ls, "/api/v1/entries", body("shared", "k", "from left"))
            assert status == 201
            # next() fails unless the event arrives within the deadline.
            seen = await right_events.next(timeout=deadline)
            assert (seen.event, seen.data) == ("write", written)
            assert seen.id is not None and EVENT_ID.fullmatch(seen.id)

            async def right_reads_it() -> bool:
                status, entry = await get(rs, "/api/v1/entries/shared/k")
                return status == 200 and entry["version"] == 1

            await await_until(right_reads_it, timeout=deadline, message="right reads left's write")

            # And the other way round, onto the same key: the version moves on.
            status, second = await post(rs, "/api/v1/entries", body("shared", "k", "from right"))
            assert (status, second["version"]) == (201, 2)
            own = await left_events.next(timeout=deadline)  # left's own write, at once
            assert own.data == written
            other = await left_events.next(timeout=deadline)
            assert other.data == second

            async def left_reads_it() -> bool:
                status, entry = await get(ls, "/api/v1/entries/shared/k")
                return status == 200 and entry["value"] == "from right"

            await await_until(left_reads_it, timeout=deadline, message="left reads right's write")
            # The right-hand stream saw its own write once, nothing twice.
            assert (await right_events.next(timeout=deadline)).data == second

        _, stats = await get(ls, "/api/v1/stats")
        assert (stats["entries"], stats["versions"]) == (1, 2)
    # Left observed right's change through the journal: one poll-lag observation at least.
    lag_count = left.metric("amfs_sidecar_poll_lag_seconds_count")
    assert lag_count is not None and lag_count >= 1


async def test_a_resync_finds_writes_that_skipped_the_journal(
    sidecar_factory: SidecarFactory, s3_settings: Any, s3_client: Any
) -> None:
    running = sidecar_factory(settings=s3_settings.model_copy(update={"resync_interval": 0.5}))
    # A writer that knows nothing of the journal: a bare version object.
    entry = ('{"entity_path": "legacy", "key": "k", "version": 1, "value": 1, '
             '"provenance": {"agent_id": "old", "session_id": "s", '
             '"written_at": "2025-01-01T00:00:00Z"}}')
    s3_client.put_object(Bucket=s3_settings.bucket, Key="amfs/default/entries/legacy/k/v1.json",
                         Body=entry.encode())
    async with running.session() as s:
        async def visible() -> bool:
            return "version" in (await get(s, "/api/v1/entries/legacy/k"))[1]

        await await_until(visible, timeout=10, message="resync picks up the bare write")
        _, stats = await get(s, "/api/v1/stats")
    assert stats["entries"] == 1
