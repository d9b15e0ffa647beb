"""Request models: what a write body turns into."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from amfs_sidecar.models import OutcomeRequest, ReadParams, SearchRequest, WriteRequest

BASE = {"entity_path": "svc", "key": "k", "value": {"a": 1}, "agent_id": "agent"}


def test_write_without_expected_version_is_last_writer_wins() -> None:
    entry = WriteRequest.model_validate(BASE).to_entry()
    assert entry.version == 1  # the adapter's "take the next version"
    assert entry.provenance.agent_id == "agent"
    assert entry.provenance.session_id.startswith("http-")


def test_expected_version_asks_for_the_next_one() -> None:
    entry = WriteRequest.model_validate({**BASE, "expected_version": 3}).to_entry()
    assert entry.version == 4


@pytest.mark.parametrize(("change", "field"), [
    ({"confidence": -0.1}, "confidence"),
    ({"memory_type": "rumour"}, "memory_type"),
    ({"expected_version": 0}, "expected_version"),
    ({"branch": "dev"}, "branch"),
    ({"agent_id": ""}, "agent_id"),
])
def test_bad_fields_name_themselves(change: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        WriteRequest.model_validate({**BASE, **change})
    assert caught.value.errors()[0]["loc"][0] == field


def test_query_strings_parse_booleans_and_numbers() -> None:
    params = ReadParams.model_validate({"version": "2", "consistent": "true"})
    assert (params.version, params.consistent) == (2, True)


def test_search_and_outcome_bodies_map_to_amfs_models() -> None:
    query = SearchRequest.model_validate({"query": "x", "limit": 5}).to_query()
    assert (query.query, query.limit, query.sort_by) == ("x", 5, "confidence")
    record = OutcomeRequest.model_validate({"outcome_ref": "o", "outcome_type": "failure",
                                            "agent_id": "a"}).to_record()
    assert record.outcome_type.value == "failure" and record.committed_at.tzinfo is not None
