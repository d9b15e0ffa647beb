"""What one write through the sidecar costs in S3 requests: its index knows the
current version, so an update is the version PUT and the journal PUT, no LIST."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from amfs_core.models import MemoryEntry, Provenance

from amfs_s3 import S3Adapter
from tests.fixtures.sidecar import SidecarFactory, await_until

WRITE = {"entity_path": "svc", "key": "cfg", "value": 1, "agent_id": "agent-a"}
OPERATIONS = ("PutObject", "ListObjectsV2", "GetObject", "HeadObject")


def counts(running: Any) -> dict[str, float]:
    return {op: sum(running.metric("amfs_sidecar_s3_requests_total", operation=op,
                                   outcome=outcome) or 0
                    for outcome in ("success", "conflict", "not_found", "error"))
            for op in OPERATIONS}


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {op: after[op] - before[op] for op in OPERATIONS if after[op] != before[op]}


async def post(session: Any, body: dict[str, Any]) -> dict[str, Any]:
    async with session.post("/api/v1/entries", json=body) as response:
        assert response.status == 201, await response.text()
        return dict(await response.json())


async def test_an_update_through_the_sidecar_is_two_puts(
    sidecar_factory: SidecarFactory, s3_settings: Any
) -> None:
    # No poll or resync during the test: every request counted is the write's.
    quiet = s3_settings.model_copy(update={"poll_interval": 300.0, "resync_interval": 300.0})
    running = sidecar_factory(settings=quiet)
    async with running.session() as s:
        start = counts(running)
        assert (await post(s, WRITE))["version"] == 1  # a new key: v1 and its journal record
        await await_until(lambda: delta(counts(running), start).get("PutObject", 0) >= 2)
        before = counts(running)
        assert (await post(s, {**WRITE, "value": 2}))["version"] == 2
        await await_until(lambda: delta(counts(running), before).get("PutObject", 0) >= 2)
    assert delta(counts(running), before) == {"PutObject": 2}


async def test_a_stale_index_loses_no_update(
    sidecar_factory: SidecarFactory, s3_settings: Any
) -> None:
    quiet = s3_settings.model_copy(update={"poll_interval": 300.0, "resync_interval": 300.0})
    running = sidecar_factory(settings=quiet)
    async with running.session() as s:
        await post(s, WRITE)
        with S3Adapter.from_settings(s3_settings) as other_pod:
            other_pod.write(MemoryEntry(
                entity_path="svc", key="cfg", value="other pod",
                provenance=Provenance(agent_id="b", session_id="s",
                                      written_at=datetime.now(UTC))))
        written = await post(s, {**WRITE, "value": 3})
    assert written["version"] == 3
    with S3Adapter.from_settings(s3_settings) as reader:
        assert [e.value for e in reader.history("svc", "cfg")] == [1, "other pod", 3]
