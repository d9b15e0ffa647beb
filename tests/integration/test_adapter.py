"""S3Adapter against moto's server over HTTP: layout, versions, reads, lists, outcomes."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from amfs_core.exceptions import VersionConflictError
from amfs_core.models import MemoryEntry, OutcomeRecord, OutcomeType, Provenance, SearchQuery

from amfs_s3 import S3Adapter
from amfs_s3.config import S3Settings
from amfs_s3.exceptions import AdapterError, InvalidNameError, S3AccessError
from tests.fixtures.s3 import all_keys


def make_entry(entity_path: str, key: str, value: object, *, version: int = 1,
               confidence: float = 0.8, agent: str = "agent-a") -> MemoryEntry:
    return MemoryEntry(
        entity_path=entity_path,
        key=key,
        value=value,
        version=version,
        confidence=confidence,
        provenance=Provenance(agent_id=agent, session_id="s1", written_at=datetime.now(UTC)),
    )


class RequestLog:
    """Counts S3 requests by operation through the adapter's botocore event hook."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()

    def __call__(self, operation: str, outcome: str) -> None:
        self.calls[(operation, outcome)] += 1

    def count(self, operation: str) -> int:
        return sum(n for (op, _), n in self.calls.items() if op == operation)

    def reset(self) -> None:
        self.calls.clear()


@pytest.fixture
def requests_seen() -> RequestLog:
    return RequestLog()


@pytest.fixture
def adapter(s3_settings: S3Settings, requests_seen: RequestLog) -> Iterator[S3Adapter]:
    with S3Adapter.from_settings(s3_settings, request_observer=requests_seen) as instance:
        yield instance


def test_write_stores_a_full_snapshot_at_the_documented_key(adapter, s3_client, bucket) -> None:
    written = adapter.write(make_entry("checkout-service", "retry-pattern", {"retries": 3}))
    assert written.version == 1
    body = s3_client.get_object(
        Bucket=bucket, Key="amfs/default/entries/checkout-service/retry-pattern/v1.json"
    )["Body"].read()
    stored = MemoryEntry.model_validate(json.loads(body))
    assert stored.value == {"retries": 3}
    assert stored.provenance.agent_id == "agent-a"
    assert stored == written


def test_updates_add_versions_and_never_touch_old_ones(adapter, s3_client, bucket) -> None:
    for value in range(12):
        adapter.write(make_entry("svc", "cfg", value))
    keys = all_keys(s3_client, bucket, "amfs/default/entries/svc/cfg/")
    assert sorted(keys) == sorted(f"amfs/default/entries/svc/cfg/v{n}.json" for n in range(1, 13))
    current = adapter.read("svc", "cfg")
    assert current is not None
    assert (current.version, current.value) == (12, 11)  # v12 beats v9 numerically
    first = adapter.read_at_version("svc", "cfg", 1)
    assert first is not None and first.value == 0
    assert [e.version for e in adapter.history("svc", "cfg")] == list(range(1, 13))


def test_stated_version_is_checked(adapter) -> None:
    adapter.write(make_entry("svc", "cfg", "one"))
    assert adapter.write(make_entry("svc", "cfg", "two", version=2)).version == 2
    with pytest.raises(VersionConflictError) as caught:
        adapter.write(make_entry("svc", "cfg", "stale", version=2))
    assert (caught.value.expected, caught.value.actual) == (2, 2)
    current = adapter.read("svc", "cfg")
    assert current is not None and current.value == "two"


def test_nested_entity_and_parent_key_never_alias(adapter) -> None:
    adapter.write(make_entry("a/b", "c", "nested"))
    adapter.write(make_entry("a", "b", "parent"))
    parent = adapter.read("a", "b")
    nested = adapter.read("a/b", "c")
    assert parent is not None and parent.value == "parent"
    assert nested is not None and nested.value == "nested"
    assert adapter.read("a", "c") is None
    assert [(e.entity_path, e.key) for e in adapter.list("a")] == [("a", "b")]
    assert [(e.entity_path, e.key) for e in adapter.list("a/b")] == [("a/b", "c")]
    assert adapter.current_version("a", "b") == 1


def test_read_of_a_key_under_an_entity_is_not_the_entity_itself(adapter) -> None:
    adapter.write(make_entry("svc/cfg", "inner", "x"))
    assert adapter.read("svc", "cfg") is None


def test_list_is_per_entity_unless_a_subtree_is_asked_for(adapter) -> None:
    adapter.write(make_entry("team", "k1", 1))
    adapter.write(make_entry("team", "k2", 2))
    adapter.write(make_entry("team/sub", "k3", 3))
    adapter.write(make_entry("teammate", "k4", 4))
    adapter.write(make_entry("team", "k1", 11))
    assert sorted(e.key for e in adapter.list("team")) == ["k1", "k2"]
    assert {e.key: e.value for e in adapter.list("team")}["k1"] == 11
    assert sorted(e.key for e in adapter.list("team", subtree=True)) == ["k1", "k2", "k3"]
    assert sorted(e.key for e in adapter.list()) == ["k1", "k2", "k3", "k4"]
    superseded = adapter.list("team", include_superseded=True)
    assert sorted((e.key, e.version) for e in superseded) == [("k1", 1), ("k1", 2), ("k2", 1)]


def test_list_costs_one_listing_and_one_get_per_entry_not_held(
    adapter, requests_seen, s3_settings
) -> None:
    with S3Adapter.from_settings(s3_settings) as writer:
        for n in range(30):
            writer.write(make_entry("bulk", f"k{n}", n))
    for gets in (30, 0):  # the second time every version's bytes are held
        requests_seen.reset()
        entries = adapter.list("bulk")
        assert sorted(e.value for e in entries) == list(range(30))
        assert requests_seen.count("ListObjectsV2") == 1
        assert requests_seen.count("GetObject") == gets
    adapter.write(make_entry("bulk", "k0", "new"))
    requests_seen.reset()
    assert {e.key: e.value for e in adapter.list("bulk")}["k0"] == "new"
    assert requests_seen.count("GetObject") == 0  # our own write's bytes are held too


def test_read_min_confidence_and_missing(adapter) -> None:
    adapter.write(make_entry("svc", "low", "v", confidence=0.3))
    assert adapter.read("svc", "low", min_confidence=0.5) is None
    assert adapter.read("svc", "low", min_confidence=0.2) is not None
    assert adapter.read("svc", "absent") is None
    assert adapter.read_at_version("svc", "low", 7) is None


@pytest.mark.parametrize(
    "entity_path,key,field",
    [("a/../b", "k", "entity_path"), ("", "k", "entity_path"), ("a", "k" * 256, "key"),
     ("a//b", "k", "entity_path"), ("a", "bad\x00", "key")],
)
def test_invalid_names_are_refused_and_nothing_is_written(
    adapter, s3_client, bucket, entity_path, key, field
) -> None:
    entry = MemoryEntry.model_construct(
        entity_path=entity_path, key=key, value=1, version=1, confidence=1.0,
        provenance=Provenance(agent_id="a", session_id="s", written_at=datetime.now(UTC)),
    )
    with pytest.raises(InvalidNameError) as caught:
        adapter.write(entry)
    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)
    assert all_keys(s3_client, bucket) == []


def test_unserialisable_value_writes_nothing(adapter, s3_client, bucket) -> None:
    with pytest.raises(InvalidNameError, match="value cannot be stored as JSON"):
        adapter.write(make_entry("svc", "nan", float("nan")))
    assert all_keys(s3_client, bucket) == []


def test_read_errors_are_errors_not_not_found(s3_endpoint) -> None:
    missing = S3Adapter("no-such-bucket-here", endpoint_url=s3_endpoint,
                        aws_access_key_id="testing", aws_secret_access_key="testing")
    with pytest.raises(S3AccessError, match="bucket 'no-such-bucket-here' does not exist"):
        missing.read("svc", "cfg")
    with pytest.raises(S3AccessError, match="does not exist"):
        missing.check_bucket()
    missing.close()


def test_a_corrupt_version_object_is_an_error(adapter, s3_client, bucket) -> None:
    s3_client.put_object(Bucket=bucket, Key="amfs/default/entries/svc/cfg/v1.json", Body=b"{oops")
    with pytest.raises(AdapterError, match="not valid JSON"):
        adapter.read("svc", "cfg")


def test_namespaces_and_prefixes_are_isolated(s3_settings) -> None:
    with (
        S3Adapter.from_settings(s3_settings) as one,
        S3Adapter.from_settings(s3_settings.model_copy(update={"namespace": "other"})) as two,
    ):
        one.write(make_entry("svc", "cfg", "one"))
        assert two.read("svc", "cfg") is None
        assert two.list() == []


def test_commit_outcome_stores_the_record_and_moves_confidence(adapter, s3_client, bucket) -> None:
    adapter.write(make_entry("svc", "fix", "restart it", confidence=0.6))
    adapter.write(make_entry("svc", "other", "untouched", confidence=0.6))
    record = OutcomeRecord(
        outcome_ref="INC-42",
        outcome_type=OutcomeType.SUCCESS,
        committed_at=datetime.now(UTC),
        causal_entry_keys=["svc/fix"],
        agent_id="agent-a",
    )
    updated = adapter.commit_outcome(record)
    assert [(e.key, e.version) for e in updated] == [("fix", 2)]
    assert updated[0].outcome_count == 1
    assert updated[0].success_count == 1
    assert updated[0].confidence != 0.6
    assert "amfs/default/outcomes/INC-42.json" in all_keys(s3_client, bucket)
    stored = adapter.list_outcomes()
    assert [r.outcome_ref for r in stored] == ["INC-42"]
    assert adapter.list_outcomes(outcome_ref="INC-42")[0].causal_entry_keys == ["svc/fix"]
    assert adapter.list_outcomes(entity_path="elsewhere") == []
    other = adapter.read("svc", "other")
    assert other is not None and other.version == 1
    assert adapter.object_counts() == {"entries": 2, "versions": 3, "outcomes": 1}


def test_search_and_stats_scan_the_namespace(adapter) -> None:
    adapter.write(make_entry("svc", "retry", "use exponential backoff", confidence=0.9))
    adapter.write(make_entry("svc", "cache", "warm the cache", confidence=0.4))
    adapter.write(make_entry("db", "pool", "size 20", confidence=0.7, agent="agent-b"))
    found = adapter.search(SearchQuery(query="backoff"))
    assert [e.key for e in found] == ["retry"]
    assert [e.key for e in adapter.search(SearchQuery(min_confidence=0.6))] == ["retry", "pool"]
    assert [e.key for e in adapter.search(SearchQuery(entity_path="db"))] == ["pool"]
    stats = adapter.stats()
    assert (stats.total_entries, stats.total_entities, stats.total_agents) == (3, 2, 2)


def test_semantic_search_uses_stored_embeddings(adapter) -> None:
    from amfs_core.embedder import EmbedderABC
    from amfs_core.models import SemanticQuery

    class AxisEmbedder(EmbedderABC):
        def embed(self, text: str) -> list[float]:
            return [1.0, 0.0] if "east" in text else [0.0, 1.0]

    east = make_entry("geo", "east", "east").model_copy(update={"embedding": [1.0, 0.0]})
    north = make_entry("geo", "north", "north").model_copy(update={"embedding": [0.0, 1.0]})
    adapter.write(east)
    adapter.write(north)
    results = adapter.semantic_search(SemanticQuery(text="east", min_similarity=0.5),
                                      AxisEmbedder())
    assert [(e.key, round(score, 3)) for e, score in results] == [("east", 1.0)]


def test_conditional_writes_are_detected_on_moto(adapter, s3_client, bucket) -> None:
    assert adapter.conditional_writes_supported is True
    assert all_keys(s3_client, bucket, "amfs/default/_probe/") == []
