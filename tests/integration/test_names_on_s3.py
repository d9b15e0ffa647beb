"""Names that are safe on every provider (issue 12), against a real S3 endpoint.

Uses only the standard ``s3_settings``/``s3_client``/``bucket`` fixtures, so the same
tests run on every provider those fixtures are parametrised over. SeaweedFS stores
'\\' as '/', and refuses an object-key segment over 255 bytes: the layout escapes
'\\' (and '/', '%') and bounds segments, so neither reaches the provider.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from amfs_core.models import MemoryEntry, OutcomeRecord, OutcomeType, Provenance

from amfs_s3 import S3Adapter
from amfs_s3.config import S3Settings
from amfs_s3.exceptions import InvalidNameError
from tests.fixtures.s3 import all_keys
from tests.fixtures.sidecar import RunningSidecar

# Three names that shared objects on SeaweedFS before '\' was escaped, and a
# slashed key that would alias entity 'svc/cfg' without escaping.
ALIASES = [("svc\\cfg", "k"), ("svc", "cfg\\k"), ("svc/cfg", "k"), ("svc", "cfg/k")]


def _entry(entity_path: str, key: str, value: object) -> MemoryEntry:
    return MemoryEntry(
        entity_path=entity_path, key=key, value=value,
        provenance=Provenance(agent_id="a", session_id="s", written_at=datetime.now(UTC)),
    )


@pytest.fixture
def adapter(s3_settings: S3Settings) -> Iterator[S3Adapter]:
    with S3Adapter.from_settings(s3_settings) as made:
        yield made


def test_names_that_alias_on_seaweedfs_stay_distinct(
    adapter: S3Adapter, s3_client: Any, bucket: str
) -> None:
    for n, (entity, key) in enumerate(ALIASES):
        adapter.write(_entry(entity, key, n))
        adapter.write(_entry(entity, key, n * 10))  # a second version must not collide
    for n, (entity, key) in enumerate(ALIASES):
        read = adapter.read(entity, key)
        assert read is not None and (read.value, read.version) == (n * 10, 2), (entity, key)
        assert [e.value for e in adapter.history(entity, key)] == [n, n * 10]
    keys = [k for k in all_keys(s3_client, bucket) if "/entries/" in k]
    assert not any("\\" in k for k in keys)
    assert len(keys) == 2 * len(ALIASES)
    assert {(e.entity_path, e.key) for e in adapter.list()} == set(ALIASES)
    assert {(e.entity_path, e.key) for e in adapter.list("svc")} == {("svc", "cfg\\k"),
                                                                      ("svc", "cfg/k")}


def test_names_without_escaped_characters_keep_their_object_keys(
    adapter: S3Adapter, s3_client: Any, bucket: str
) -> None:
    adapter.write(_entry("checkout-service", "retry-pattern", 1))
    assert "amfs/default/entries/checkout-service/retry-pattern/v1.json" in all_keys(
        s3_client, bucket)


@pytest.mark.parametrize(
    ("write", "field"),
    [
        (lambda a: a.write(_entry("svc", "k" * 256, 1)), "key"),
        (lambda a: a.write(_entry("e" * 256, "k", 1)), "entity_path"),
        (lambda a: a.commit_outcome(OutcomeRecord(
            outcome_ref="r" * 251, outcome_type=OutcomeType.SUCCESS, agent_id="a",
            committed_at=datetime.now(UTC))), "outcome_ref"),
    ],
)
def test_a_segment_over_255_bytes_is_refused_and_nothing_written(
    adapter: S3Adapter, s3_client: Any, bucket: str, write: Any, field: str
) -> None:
    with pytest.raises(InvalidNameError) as caught:
        write(adapter)
    assert caught.value.field == field
    assert "255 bytes" in str(caught.value)
    assert [k for k in all_keys(s3_client, bucket) if "/_probe/" not in k] == []


async def test_the_sidecar_keeps_aliases_apart_on_both_read_routes(
    sidecar: RunningSidecar,
) -> None:
    async with sidecar.session() as s:
        for n, (entity, key) in enumerate(ALIASES):
            async with s.post("/api/v1/entries", json={"entity_path": entity, "key": key,
                                                       "value": n}) as response:
                assert response.status == 201
        for n, (entity, key) in enumerate(ALIASES):
            async with s.get("/api/v1/entry", params={"entity_path": entity, "key": key,
                                                      "consistent": "true"}) as response:
                assert (await response.json())["value"] == n, (entity, key)
            async with s.get("/api/v1/history", params={"entity_path": entity,
                                                        "key": key}) as response:
                assert [v["value"] for v in (await response.json())["versions"]] == [n]
        # The path route's last segment is the key: entity 'svc/cfg', key 'k'.
        async with s.get("/api/v1/entries/svc/cfg/k", params={"consistent": "true"}) as response:
            assert (await response.json())["value"] == 2


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/outcomes", {"outcome_ref": "r" * 251, "outcome_type": "success"},
         "outcome_ref"),
        ("/api/v1/entries", {"entity_path": "svc", "key": "k" * 256, "value": 1}, "key"),
        ("/api/v1/entries", {"entity_path": "svc", "key": "\\" * 86, "value": 1}, "key"),
    ],
)
async def test_the_sidecar_answers_400_naming_the_field_for_a_long_segment(
    sidecar: RunningSidecar, s3_client: Any, bucket: str, path: str, body: dict[str, Any],
    field: str,
) -> None:
    async with sidecar.session() as s, s.post(path, json=body) as response:
        answer = await response.json()
    assert response.status == 400, answer
    assert answer["field"] == field and answer["type"] == "InvalidNameError"
    assert "255 bytes" in answer["detail"]
    assert [k for k in all_keys(s3_client, bucket)
            if "/entries/" in k or "/outcomes/" in k] == []
