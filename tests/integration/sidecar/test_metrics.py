"""Metric values move with what the sidecar does (scraped from the metrics port)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest

from amfs_s3.config import S3Settings
from tests.fixtures.s3 import free_port
from tests.fixtures.s3_proxy import FaultProxy
from tests.fixtures.sidecar import RunningSidecar, SidecarFactory, await_until, wait_until

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
                 method="POST", code="201") == 3
    read_route = "/api/v1/entries/{entity_path}/{key}"
    # Missing entries answer 200 {"status": "not_found"}, as amfs-http-server.
    assert value(sidecar, "amfs_sidecar_requests_total", route=read_route, method="GET",
                 code="200") == 2
    assert value(sidecar, "amfs_sidecar_request_duration_seconds_count", route=read_route,
                 method="GET") == 2
    assert value(sidecar, "amfs_sidecar_requests_total", route="/api/v1/outcomes",
                 method="POST", code="201") == 1
    # The list and the commit of one route template are two series.
    async with sidecar.session() as s:
        await get(s, "/api/v1/outcomes")
    assert value(sidecar, "amfs_sidecar_requests_total", route="/api/v1/outcomes",
                 method="GET", code="200") == 1
    assert value(sidecar, "amfs_sidecar_requests_total", route="/api/v1/outcomes",
                 method="POST", code="201") == 1


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


async def test_a_closed_stream_is_no_error_and_no_latency(
    sidecar: RunningSidecar, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    stream = "/api/v1/stream"
    async with sidecar.session() as s:
        async with open_stream(s):
            assert value(sidecar, "amfs_sidecar_watchers") == 1
        # The client is gone; the next heartbeat (0.5 s) finds the connection closed.
        await await_until(lambda: value(sidecar, "amfs_sidecar_watchers") == 0,
                          message="the stream handler to end")
        await await_until(
            lambda: any(r.getMessage() == "watch client disconnected" for r in caplog.records),
            message="the disconnect noticed")
    assert value(sidecar, "amfs_sidecar_requests_total", route=stream, method="GET",
                 code="500") == 0
    assert value(sidecar, "amfs_sidecar_requests_total", route=stream, method="GET",
                 code="200") == 1
    # Observed once, at the first byte; its lifetime is not a request latency.
    assert value(sidecar, "amfs_sidecar_request_duration_seconds_count", route=stream,
                 method="GET") == 1
    assert value(sidecar, "amfs_sidecar_request_duration_seconds_bucket", route=stream,
                 method="GET", le="0.25") == 1
    disconnect = [r for r in caplog.records if r.getMessage() == "watch client disconnected"]
    assert [r.levelno for r in disconnect] == [logging.DEBUG]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_unreachable_s3_counts_every_failed_attempt_with_its_operation(
    sidecar_factory: SidecarFactory, s3_settings: S3Settings,
) -> None:
    # Nothing listens on this port: every attempt is a refused connection.
    dead = s3_settings.model_copy(update={"endpoint_url": f"http://127.0.0.1:{free_port()}"})
    sidecar = sidecar_factory("dead", settings=dead, wait=False,
                              adapter_options={"max_attempts": 3, "connect_timeout": 0.5})
    wait_until(lambda: value(sidecar, "amfs_sidecar_s3_requests_total", operation="HeadBucket",
                             outcome="error") >= 3, message="three failed HeadBucket attempts")
    assert value(sidecar, "amfs_sidecar_s3_requests_total", operation="HeadBucket",
                 outcome="success") == 0
    # Never synced: the timestamp is absent rather than 0 (which reads as 56 years ago).
    assert sidecar.metric("amfs_sidecar_last_poll_success_timestamp_seconds") is None
    assert value(sidecar, "amfs_sidecar_poll_interval_seconds") == s3_settings.poll_interval


def test_retried_s3_errors_are_counted_per_attempt(
    fault_proxy: FaultProxy, s3_settings: S3Settings, sidecar_factory: SidecarFactory,
) -> None:
    proxied = s3_settings.model_copy(update={"endpoint_url": fault_proxy.url})
    behind = sidecar_factory("behind", settings=proxied)
    errors = value(behind, "amfs_sidecar_s3_requests_total", operation="PutObject",
                   outcome="error")
    fault_proxy.add(method="PUT", path_contains="/entries/", times=2, status=500)

    async def write() -> Any:
        async with behind.session() as s:
            return await post(s, "/api/v1/entries", WRITE)

    status, _ = asyncio.run(write())
    assert status == 201  # the third attempt succeeded
    assert value(behind, "amfs_sidecar_s3_requests_total", operation="PutObject",
                 outcome="error") - errors == 2
