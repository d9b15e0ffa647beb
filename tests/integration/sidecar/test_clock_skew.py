"""Writers whose clocks are wrong: one 120 s fast, one 120 s slow, one right.

The skewed sidecars are real processes under libfaketime (Debian package
``faketime``), so their ``time.time()`` is really off. Every acknowledged write
must reach every other sidecar's reads and streams within poll interval + 2 s.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from amfs_s3.config import S3Settings
from tests.fixtures.sidecar import (
    SidecarFactory,
    SidecarProcess,
    await_until,
    sidecar_env,
    spawn_sidecar,
)

from .sse import EventReader
from .test_api_entries import get, post
from .test_stream import body, open_stream

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")

pytestmark = pytest.mark.skipif(
    not LIBFAKETIME.exists(),
    reason="needs libfaketime: install the Debian package 'faketime'",
)


def skewed_env(settings: S3Settings, offset: str) -> dict[str, str]:
    env = sidecar_env(settings)
    env.update(LD_PRELOAD=str(LIBFAKETIME), FAKETIME=offset, FAKETIME_DONT_FAKE_MONOTONIC="1")
    return env


def unix_session(socket_path: Path) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(base_url="http://localhost",
                                 connector=aiohttp.UnixConnector(path=str(socket_path)))


async def test_writers_with_wrong_clocks_reach_every_other_sidecar(
    sidecar_factory: SidecarFactory, s3_settings: S3Settings, socket_dir: Path,
    sidecar_processes: list[SidecarProcess],
) -> None:
    # No resync to hide behind: what arrives, arrives through the journal.
    settings = s3_settings.model_copy(update={"resync_interval": 3600.0})
    deadline = settings.poll_interval + 2.0
    honest = sidecar_factory("honest", settings=settings)
    sessions: dict[str, Any] = {}
    async with AsyncExitStack() as stack:
        sessions["honest"] = await stack.enter_async_context(honest.session())
        for name, offset in (("fast", "+120s"), ("slow", "-120s")):
            process = spawn_sidecar(settings, socket_dir / f"{name}.sock",
                                    env=skewed_env(settings, offset))
            sidecar_processes.append(process)
            sessions[name] = await stack.enter_async_context(unix_session(process.socket_path))
        streams: dict[str, EventReader] = {
            name: await stack.enter_async_context(open_stream(session, "*"))
            for name, session in sessions.items()
        }
        # The fast writer goes first: on a cursor that follows writers' clocks
        # its record would hide everything written after it.
        for writer in ("fast", "honest", "slow", "fast", "slow", "honest"):
            status, written = await post(sessions[writer], "/api/v1/entries",
                                         body("clock", f"by-{writer}", writer))
            assert status == 201, written
            for name, stream in streams.items():
                event = await stream.next(timeout=deadline)
                assert (event.event, event.data) == ("write", written), (
                    f"{name} got {event.data} instead of {writer}'s write")
                if name == writer:
                    continue

                async def reads_it(session: Any = sessions[name], path: str = f"by-{writer}",
                                   version: int = written["version"]) -> bool:
                    status, entry = await get(session, f"/api/v1/entries/clock/{path}")
                    return status == 200 and entry.get("version") == version

                await await_until(reads_it, timeout=deadline,
                                  message=f"{name} reads {writer}'s write")
    # Journal keys are in the storage's clock, whoever wrote them: all within
    # seconds of each other, not 240 s apart.
    stamps = [int(Path(e).name.split("-", 1)[0]) for e in _journal_keys(settings)]
    assert len(stamps) == 6
    assert max(stamps) - min(stamps) < 30_000, stamps
    for process in sidecar_processes:
        assert "ahead of the storage's clock" not in process.log()


def _journal_keys(settings: S3Settings) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=settings.endpoint_url,
                          region_name=settings.region_name,
                          aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
                          aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"))
    prefix = f"{settings.prefix}{settings.namespace}/journal/"
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket,
                                                             Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


async def test_a_record_from_the_future_is_delivered_once_and_reported(
    sidecar_factory: SidecarFactory, s3_settings: S3Settings, s3_client: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A writer that stamps its records with its own (wrong) clock, as old writers do."""
    settings = s3_settings.model_copy(update={"resync_interval": 3600.0})
    deadline = settings.poll_interval + 2.0
    running = sidecar_factory(settings=settings)
    peer = sidecar_factory("peer", settings=settings)
    async with running.session() as s, peer.session() as p, open_stream(s, "*") as events:
        status, entry = await post(s, "/api/v1/entries", body("clock", "future", "v1"))
        assert status == 201
        # Another writer's v2, with a journal record claiming to be 120 s ahead.
        stored = dict(entry, version=2, value="from the future")
        root = f"{settings.prefix}{settings.namespace}"
        s3_client.put_object(Bucket=settings.bucket, Key=f"{root}/entries/clock/future/v2.json",
                             Body=json.dumps(stored).encode())
        ahead_ms = int(time.time() * 1000) + 120_000
        record = {"kind": "write", "written_at_ms": ahead_ms, "writer": "wrong-clock",
                  "entity_path": "clock", "key": "future", "version": 2}
        s3_client.put_object(Bucket=settings.bucket,
                             Key=f"{root}/journal/{ahead_ms:013d}-wrong-clock-000001.json",
                             Body=json.dumps(record).encode())
        assert (await events.next(timeout=deadline)).data["version"] == 1  # our own, at once
        assert (await events.next(timeout=deadline)).data["value"] == "from the future"
        # Another sidecar's writes after it, with a clock that is right, still arrive ...
        status, later = await post(p, "/api/v1/entries", body("clock", "later", "after"))
        assert (await events.next(timeout=deadline)).data == later
        # ... and the record from the future is not delivered again by later polls.
        running.sidecar.sync.poke()  # type: ignore[union-attr]
        status, other = await post(p, "/api/v1/entries", body("clock", "last", "end"))
        assert (await events.next(timeout=deadline)).data == other
    assert running.metric("amfs_sidecar_journal_future_records_total") == 1
    assert any("wrong-clock" in r.getMessage() and "ahead of the storage's clock" in
               r.getMessage() for r in caplog.records)
