"""The change feed under lost journal records: an acknowledged write always
reaches the other sidecars' streams, even when its journal PUT failed."""

from __future__ import annotations

from typing import Any

from amfs_s3.config import S3Settings
from tests.fixtures.s3_proxy import FaultProxy
from tests.fixtures.sidecar import SidecarFactory, await_until
from tests.integration.sidecar.test_stream import open_stream
from tests.reliability.test_sidecar_faults import (
    ADAPTER_OPTIONS,
    JOURNAL_OBJECT,
    body,
    call,
    journal_versions,
    session,
)


async def test_a_write_whose_journal_put_failed_still_reaches_other_sidecars(
    sidecar_factory: SidecarFactory, s3_settings: S3Settings, fault_proxy: FaultProxy,
    s3_client: Any,
) -> None:
    # No resync to fall back on: the record itself must arrive.
    settings = s3_settings.model_copy(update={"resync_interval": 3600.0})
    deadline = settings.poll_interval + 2.0
    writer = sidecar_factory(
        "writer", settings=settings.model_copy(update={"endpoint_url": fault_proxy.url}),
        adapter_options=ADAPTER_OPTIONS)
    reader = sidecar_factory("reader", settings=settings)
    # Every attempt of the next journal PUT fails (botocore's retries included).
    refused = fault_proxy.add(method="PUT", path_contains=JOURNAL_OBJECT, status=500,
                              times=ADAPTER_OPTIONS["max_attempts"])
    async with session(writer) as ws, reader.session() as rs, open_stream(rs, "*") as events:
        status, written = await call(ws, "POST", "/api/v1/entries", json=body("lost", "k", 1))
        assert status == 201, written
        assert refused.fired == ADAPTER_OPTIONS["max_attempts"]
        # The writer's next poll writes the record again; the reader streams it.
        event = await events.next(timeout=deadline + settings.poll_interval)
        assert (event.event, event.data) == ("write", written)

        async def reader_has_it() -> bool:
            status, entry = await call(rs, "GET", "/api/v1/entries/lost/k")
            return status == 200 and entry.get("version") == 1

        await await_until(reader_has_it, timeout=deadline, message="reader reads the write")
    assert journal_versions(s3_client, settings.bucket, "lost", "k") == [1]
    await await_until(lambda: writer.metric("amfs_sidecar_journal_pending_records") == 0,
                      timeout=deadline, message="no journal record left pending")


async def test_stats_count_every_version_when_pods_interleave_on_one_key(
    sidecar_factory: SidecarFactory, s3_settings: S3Settings, s3_client: Any,
) -> None:
    settings = s3_settings.model_copy(update={"resync_interval": 3600.0})
    left, right = sidecar_factory("left", settings=settings), sidecar_factory("right",
                                                                            settings=settings)
    rounds = 10
    async with left.session() as ls, right.session() as rs:
        for _ in range(rounds):
            # Faster than either polls: each writes on top of the other's unseen version.
            for s in (ls, rs):
                status, _ = await call(s, "POST", "/api/v1/entries", json=body("hot", "k"))
                assert status == 201

        async def both_count_exactly() -> bool:
            counts = []
            for s in (ls, rs):
                _, stats = await call(s, "GET", "/api/v1/stats")
                counts.append((stats["entries"], stats["versions"]))
            return counts == [(1, 2 * rounds)] * 2

        await await_until(both_count_exactly, timeout=settings.poll_interval + 2.0,
                          message="both sidecars count every stored version")
    stored = s3_client.list_objects_v2(Bucket=settings.bucket,
                                       Prefix="amfs/default/entries/hot/k/")["KeyCount"]
    assert stored == 2 * rounds
