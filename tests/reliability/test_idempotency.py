"""Idempotency-Key: the retry of a write whose answer was lost makes no second version.

The fault proxy forwards the version PUT to S3 and drops every answer, so the
version is stored while the sidecar answers 503: the ambiguous failure a client
can only retry. With the same key the retry returns that version, on the same
sidecar or on another one (the key is on the version object, not only in memory).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from amfs_core.models import MemoryEntry, Provenance

from amfs_s3.adapter import S3Adapter
from amfs_s3.config import S3Settings
from tests.fixtures.s3_proxy import FaultProxy
from tests.fixtures.sidecar import SidecarFactory
from tests.reliability.test_sidecar_faults import (
    ADAPTER_OPTIONS,
    ATTEMPTS,
    body,
    call,
    journal_versions,
    session,
    stored_versions,
)

VERSION_ONE = "/entries/idem/k/v1.json"


async def test_a_retry_with_the_same_key_after_a_lost_answer_makes_one_version(
    sidecar_factory: SidecarFactory, s3_settings: S3Settings, fault_proxy: FaultProxy,
    s3_client: Any,
) -> None:
    writer = sidecar_factory(
        "writer", settings=s3_settings.model_copy(update={"endpoint_url": fault_proxy.url}),
        adapter_options=ADAPTER_OPTIONS)
    other = sidecar_factory("other")
    lost = fault_proxy.add(method="PUT", path_contains=VERSION_ONE, drop_after_forward=True,
                           times=ATTEMPTS)
    first = {"Idempotency-Key": "order-42"}
    async with session(writer) as ws, session(other) as os_:
        status, error = await call(ws, "POST", "/api/v1/entries", json=body("idem", "k", 1),
                                   headers=first)
        assert status == 503, error
        assert lost.fired == ATTEMPTS
        assert stored_versions(s3_client, s3_settings.bucket, "idem", "k") == [1]  # it landed
        assert journal_versions(s3_client, s3_settings.bucket, "idem", "k") == []

        # The retry, the same request with the same key: the first write's version.
        status, retried = await call(ws, "POST", "/api/v1/entries", json=body("idem", "k", 1),
                                     headers=first)
        assert (status, retried["version"], retried["value"]) == (201, 1, 1)
        # Again, on a sidecar that never saw the key: it is on the version object.
        status, elsewhere = await call(os_, "POST", "/api/v1/entries",
                                       json=body("idem", "k", 1), headers=first)
        assert (status, elsewhere) == (201, retried)
        assert stored_versions(s3_client, s3_settings.bucket, "idem", "k") == [1]
        # The lost answer took the journal record with it; the retry wrote it.
        assert 1 in journal_versions(s3_client, s3_settings.bucket, "idem", "k")

        # A different key is a different write.
        status, second = await call(ws, "POST", "/api/v1/entries", json=body("idem", "k", 1),
                                    headers={"Idempotency-Key": "order-43"})
        assert (status, second["version"]) == (201, 2)
        # The first key with another request: refused, naming what to do.
        status, refused = await call(ws, "POST", "/api/v1/entries", json=body("idem", "k", 99),
                                     headers=first)
        assert status == 409, refused
        assert refused["type"] == "IdempotencyKeyReusedError"
        assert refused["field"] == "Idempotency-Key" and "new key" in refused["detail"]
        # A write without a key is not deduplicated.
        status, third = await call(ws, "POST", "/api/v1/entries", json=body("idem", "k", 1))
        assert (status, third["version"]) == (201, 3)
    assert stored_versions(s3_client, s3_settings.bucket, "idem", "k") == [1, 2, 3]


async def test_a_malformed_idempotency_key_is_a_400_naming_the_header(
    sidecar_factory: SidecarFactory, s3_client: Any, s3_settings: S3Settings,
) -> None:
    running = sidecar_factory()
    async with session(running) as s:
        for bad in ("", "has space", "x" * 256, "naïve"):
            status, error = await call(s, "POST", "/api/v1/entries", json=body("idem", "bad"),
                                       headers={"Idempotency-Key": bad})
            assert status == 400, (bad, error)
            assert error["field"] == "Idempotency-Key" and "A-Z a-z 0-9" in error["detail"]
    assert stored_versions(s3_client, s3_settings.bucket, "idem", "bad") == []


def entry(value: int, entity: str = "lib") -> MemoryEntry:
    # A new object each time, as a retrying caller would build it.
    return MemoryEntry(entity_path=entity, key="k", value=value,
                       provenance=Provenance(agent_id="a", session_id="s",
                                             written_at=datetime.now(UTC)))


def test_the_adapter_takes_the_same_key_as_an_argument(s3_settings: S3Settings,
                                                      s3_client: Any) -> None:

    with S3Adapter.from_settings(s3_settings) as first, \
            S3Adapter.from_settings(s3_settings) as second:
        written = first.write(entry(1), idempotency_key="job-7")
        assert first.write(entry(1), idempotency_key="job-7") == written
        assert second.write(entry(1), idempotency_key="job-7") == written
        assert second.write(entry(1), idempotency_key="job-8").version == 2
    assert stored_versions(s3_client, s3_settings.bucket, "lib", "k") == [1, 2]


def test_the_sidecar_client_sends_the_key(sidecar_factory: SidecarFactory, s3_client: Any,
                                         s3_settings: S3Settings) -> None:
    client = sidecar_factory().client()
    written = client.write(entry(1, "via-client"), idempotency_key="run-1")
    assert client.write(entry(1, "via-client"), idempotency_key="run-1") == written
    assert client.write(entry(1, "via-client")).version == 2
    assert stored_versions(s3_client, s3_settings.bucket, "via-client", "k") == [1, 2]
