"""The AMFS SDK's ``AgentMemory`` over upstream's ``HttpAdapter`` (amfs-adapter-http from
PyPI, unmodified) against the sidecar's loopback listener, as an agent in a pod uses it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from amfs import AgentMemory
from amfs_adapter_http import HttpAdapter
from amfs_core.models import OutcomeType

from tests.fixtures.sidecar import RunningSidecar

from .conftest import SIDECAR_AGENT_ID


@pytest.fixture
def adapter(http_url: str) -> HttpAdapter:
    return HttpAdapter(base_url=http_url, api_key="")


@pytest.fixture
def memory(adapter: HttpAdapter) -> Iterator[AgentMemory]:
    mem = AgentMemory(agent_id="agent-a", adapter=adapter)
    yield mem
    close = getattr(mem, "close", None)
    if callable(close):
        close()


def test_write_read_and_update(memory: AgentMemory) -> None:
    first = memory.write("checkout-service", "retry-pattern", {"max_retries": 3})
    assert (first.version, first.provenance.agent_id) == (1, "agent-a")
    read = memory.read("checkout-service", "retry-pattern")
    assert read is not None and read.value == {"max_retries": 3}
    second = memory.write("checkout-service", "retry-pattern", {"max_retries": 5})
    assert second.version == 2
    again = memory.read("checkout-service", "retry-pattern")
    assert again is not None and (again.version, again.value) == (2, {"max_retries": 5})


def test_read_missing_is_none(memory: AgentMemory) -> None:
    assert memory.read("nobody", "nothing") is None


def test_list_returns_every_entry_beyond_one_page(memory: AgentMemory,
                                                  adapter: HttpAdapter) -> None:
    for n in range(130):
        memory.write("bulk", f"k{n:03d}", n)
    memory.write("other", "k", "x")
    listed = memory.list("bulk")
    assert sorted(e.key for e in listed) == [f"k{n:03d}" for n in range(130)]
    assert len(adapter.list()) == 131  # the whole memory, 100 a page


def test_history_lists_versions_oldest_first(memory: AgentMemory) -> None:
    for value in ("a", "b", "c"):
        memory.write("svc", "cfg", value)
    history = memory.history("svc", "cfg")
    assert [(e.version, e.value) for e in history] == [(1, "a"), (2, "b"), (3, "c")]
    assert memory.history("svc", "missing") == []


def test_search_with_a_query(memory: AgentMemory) -> None:
    memory.write("svc/api", "retry", "retry three times", confidence=0.9)
    memory.write("svc/api", "timeout", "timeout is 30s", confidence=0.8)
    memory.write("svc/db", "pool", "retry the pool", confidence=0.4)
    found = memory.search(query="retry")
    assert {(e.entity_path, e.key) for e in found} == {("svc/api", "retry"), ("svc/db", "pool")}
    scoped = memory.search(query="retry", entity_path="svc/api")
    assert [(e.entity_path, e.key) for e in scoped] == [("svc/api", "retry")]


def test_commit_outcome_returns_the_re_versioned_entries(memory: AgentMemory) -> None:
    memory.write("svc", "approach", "use a cache")
    assert memory.read("svc", "approach") is not None  # the read links it to the outcome
    updated = memory.commit_outcome("task-42", OutcomeType.SUCCESS)
    assert [(e.entity_path, e.key, e.version) for e in updated] == [("svc", "approach", 2)]
    assert updated[0].outcome_count == 1
    after = memory.read("svc", "approach")
    assert after is not None and (after.version, after.outcome_count) == (2, 1)


def test_stats(memory: AgentMemory) -> None:
    memory.write("svc/a", "k1", 1, confidence=0.5)
    memory.write("svc/a", "k2", 2, confidence=0.9)
    memory.write("svc/b", "k1", 3)
    stats = memory.stats()
    assert (stats.total_entries, stats.total_entities, stats.total_agents) == (3, 2, 1)
    assert stats.entities == {"svc/a": 2, "svc/b": 1}
    assert stats.agents == {"agent-a": 3}
    assert (stats.confidence_min, stats.confidence_max) == (0.5, 1.0)
    assert stats.oldest_entry_at is not None and stats.newest_entry_at is not None


def test_a_key_containing_a_slash(memory: AgentMemory) -> None:
    memory.write("sweep/abc", "active-negotiation/xyz", "slashed")
    memory.write("sweep/abc/active-negotiation", "xyz", "nested")
    slashed = memory.read("sweep/abc", "active-negotiation/xyz")
    nested = memory.read("sweep/abc/active-negotiation", "xyz")
    assert slashed is not None and slashed.value == "slashed"
    assert nested is not None and nested.value == "nested"
    assert [e.key for e in memory.list("sweep/abc")] == ["active-negotiation/xyz"]


def test_writes_without_an_agent_get_the_header_or_the_sidecars_id(
    adapter: HttpAdapter, live_sidecar: RunningSidecar
) -> None:
    # HttpAdapter bound to an identity sends X-AMFS-Agent-Id on every request.
    bound = adapter.bind("from-header", None)
    body = {"entity_path": "svc", "key": "k", "value": 1}
    assert bound._post("/api/v1/entries", body)["provenance"]["agent_id"] == "from-header"
    assert adapter._post("/api/v1/entries", body)["provenance"]["agent_id"] == SIDECAR_AGENT_ID
