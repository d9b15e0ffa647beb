"""Metric values move with what the sidecar does (scraped from the metrics port)."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.fixtures.sidecar import RunningSidecar, await_until, wait_until

from .test_api_entries import WRITE, get, post
from .test_stream import open_stream

CONST = {"memory": "test-memory", "memory_namespace": "test-ns"}


def value(sidecar: RunningSidecar, name: str, **labels: str) -> float:
    return sidecar.metric(name, **CONST, **labels) or 0.0


async def test_counts_requests_objects_and_s3_calls(sidecar: RunningSidecar) -> None:
    assert value(sidecar, "amfs_sidecar_conditional_writes_supported") == 1.0
    # The start-up probe's second PUT is refused: that is how support is detected.
    assert value(sidecar, "amfs_sidecar_s3_requests_total", operation="PutObject",
                 outcome="conflict") >= 1
    assert value(sidecar, "amfs_sidecar_objects", kind="entries") == 0
    puts = value(sidecar, "amfs_sidecar_s3_requests_total", operation="PutObject",
                 outcome="success")

    async with sidecar.session() as s:
        await post(s, "/api/v1/entries", WRITE)
        await post(s, "/api/v1/entries", WRITE)
        await post(s, "/api/v1/entries", {**WRITE, "key": "other"})
        await get(s, "/api/v1/entries/checkout-service/missing")
        await get(s, "/api/v1/entries/checkout-service/retry-pattern", version="9")
        await post(s, "/api/v1/outcomes", {"outcome_ref": "o", "outcome_type": "success",
                                           "agent_id": "a"})

    assert value(sidecar, "amfs_sidecar_objects", kind="entries") == 2
    assert value(sidecar, "amfs_sidecar_objects", kind="versions") == 3
    assert value(sidecar, "amfs_sidecar_objects", kind="outcomes") == 1
    # Three versions, three journal records, one outcome and its journal record.
    assert value(sidecar, "amfs_sidecar_s3_requests_total", operation="PutObject",
                 outcome="success") - puts == 8
    assert value(sidecar, "amfs_sidecar_s3_requests_total", operation="GetObject",
                 outcome="not_found") >= 1
    assert value(sidecar, "amfs_sidecar_requests_total", route="/api/v1/entries",
                 code="201") == 3
    read_route = "/api/v1/entries/{entity_path}/{key}"
    # Missing entries answer 200 {"status": "not_found"}, as amfs-http-server.
    assert value(sidecar, "amfs_sidecar_requests_total", route=read_route, code="200") == 2
    assert value(sidecar, "amfs_sidecar_request_duration_seconds_count", route=read_route) == 2
    assert value(sidecar, "amfs_sidecar_requests_total", route="/api/v1/outcomes",
                 code="201") == 1


async def test_watchers_gauge_follows_open_streams(sidecar: RunningSidecar) -> None:
    async with sidecar.session() as s:
        async with open_stream(s), open_stream(s, "svc"):
            assert value(sidecar, "amfs_sidecar_watchers") == 2
        await await_until(lambda: value(sidecar, "amfs_sidecar_watchers") == 0,
                          message="watchers back to 0")


def test_polls_are_timed_and_stamped(sidecar: RunningSidecar) -> None:
    before = time.time()
    wait_until(lambda: value(sidecar, "amfs_sidecar_poll_duration_seconds_count") >= 2,
               message="two polls")
    wait_until(lambda: value(sidecar, "amfs_sidecar_last_poll_success_timestamp_seconds")
               >= before, message="a poll after the test started")


def test_poll_lag_comes_from_journal_timestamps(sidecar: RunningSidecar, s3_client: Any,
                                                s3_settings: Any) -> None:
    # Another writer's journal record, stamped 60 s before it became visible.
    now_ms = int(time.time() * 1000)
    record = {"kind": "write", "written_at_ms": now_ms - 60_000, "writer": "slow-writer",
              "entity_path": "svc", "key": "k", "version": 1}
    entry = {"entity_path": "svc", "key": "k", "version": 1, "value": 1,
             "provenance": {"agent_id": "a", "session_id": "s",
                            "written_at": "2025-01-01T00:00:00Z"}}
    s3_client.put_object(Bucket=s3_settings.bucket, Key="amfs/default/entries/svc/k/v1.json",
                         Body=json.dumps(entry).encode())
    s3_client.put_object(Bucket=s3_settings.bucket,
                         Key=f"amfs/default/journal/{now_ms:013d}-slow-writer-000000.json",
                         Body=json.dumps(record).encode())
    wait_until(lambda: value(sidecar, "amfs_sidecar_poll_lag_seconds_count") == 1,
               message="the change observed")
    assert value(sidecar, "amfs_sidecar_poll_lag_seconds_bucket", le="30.0") == 0
    assert value(sidecar, "amfs_sidecar_poll_lag_seconds_bucket", le="120.0") == 1
    assert value(sidecar, "amfs_sidecar_objects", kind="entries") == 1
