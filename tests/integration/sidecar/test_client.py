"""``SidecarAdapter``: the AMFS SDK in a pod, talking to the sidecar over its socket."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from amfs import AgentMemory
from amfs_core.exceptions import VersionConflictError
from amfs_core.models import MemoryEntry, OutcomeType, Provenance

from amfs_s3.exceptions import InvalidNameError
from amfs_sidecar.client import (
    SidecarAdapter,
    SidecarReadOnlyError,
    SidecarRequestError,
    SidecarUnavailableError,
)
from amfs_sidecar.exceptions import EntryTooLargeError
from tests.fixtures.sidecar import RunningSidecar, SidecarFactory, wait_until


@pytest.fixture
def memory(sidecar: RunningSidecar, monkeypatch: pytest.MonkeyPatch) -> Iterator[AgentMemory]:
    # The injector sets AMFS_SOCKET in every app container; the default adapter reads it.
    monkeypatch.setenv("AMFS_SOCKET", str(sidecar.socket_path))
    mem = AgentMemory(agent_id="pod-agent", adapter=SidecarAdapter())
    yield mem
    mem.close()


def entry(entity: str, key: str, value: Any, version: int = 1) -> MemoryEntry:
    return MemoryEntry(entity_path=entity, key=key, value=value, version=version,
                       provenance=Provenance(agent_id="a", session_id="s",
                                             written_at="2025-01-01T00:00:00Z"))  # type: ignore[arg-type]


def test_agent_memory_over_the_sidecar(memory: AgentMemory, sidecar: RunningSidecar) -> None:
    memory.write("checkout-service", "retry-pattern", {"max_retries": 3}, confidence=0.7)
    memory.write("checkout-service", "retry-pattern", {"max_retries": 5}, confidence=0.7)
    memory.write("checkout-service", "timeout", "30s", confidence=0.9)
    memory.write("checkout-service/eu", "timeout", "45s")

    current = memory.read("checkout-service", "retry-pattern")
    assert current is not None
    assert (current.version, current.value) == (2, {"max_retries": 5})
    assert current.provenance.agent_id == "pod-agent"
    assert current.integrity_chain is not None  # the SDK's full entry went through unchanged

    assert sorted(e.key for e in memory.list("checkout-service")) == ["retry-pattern", "timeout"]
    assert [e.value for e in memory.history("checkout-service", "retry-pattern")] == [
        {"max_retries": 3}, {"max_retries": 5}]
    assert [e.key for e in memory.search(query="30s")] == ["timeout"]
    assert [e.value for e in memory.search(query="s", entity_path="checkout-service/eu")] == [
        "45s"]

    memory.read("checkout-service", "timeout")
    memory.commit_outcome("DEPLOY-1", OutcomeType.SUCCESS)
    after = memory.adapter.read("checkout-service", "timeout")
    assert after is not None and after.outcome_count == 1 and after.version == 2
    assert [r.outcome_ref for r in memory.adapter.list_outcomes()] == ["DEPLOY-1"]
    assert memory.stats().total_entries == 3
    # Everything went through the sidecar: its index knows every entry.
    assert sidecar.client().sidecar_stats()["entries"] == 3


def test_the_adapter_maps_the_compatible_shapes(sidecar: RunningSidecar) -> None:
    adapter = sidecar.client()
    adapter.write(entry("a", "b/c", "slashed"))
    adapter.write(entry("a/b", "c", "nested"))
    adapter.write(entry("a", "b/c", "again"))
    assert adapter.read("a", "missing") is None
    assert adapter.read_at_version("a", "b/c", 9) is None
    slashed, nested = adapter.read("a", "b/c"), adapter.read("a/b", "c")
    assert slashed is not None and (slashed.value, slashed.version) == ("again", 2)
    assert nested is not None and nested.value == "nested"
    first = adapter.read_at_version("a", "b/c", 1)
    assert first is not None and first.value == "slashed"
    assert [e.value for e in adapter.history("a", "b/c")] == ["slashed", "again"]
    assert adapter.history("a", "missing") == []
    assert [(e.entity_path, e.key) for e in adapter.list("a")] == [("a", "b/c")]


def test_watch_sees_writes_from_this_pod_and_from_another(
    sidecar_factory: SidecarFactory,
) -> None:
    here, there = sidecar_factory("here"), sidecar_factory("there")
    seen: list[tuple[str, Any]] = []
    lock = threading.Lock()

    def on_write(e: MemoryEntry) -> None:
        with lock:
            seen.append((e.key, e.value))

    watcher = here.client()
    handle = watcher.watch("team", on_write)
    here.client().write(entry("team", "local", 1))
    here.client().write(entry("elsewhere", "ignored", 0))
    there.client().write(entry("team/sub", "remote", 2))
    wait_until(lambda: len(seen) == 2, message="both writes watched")
    assert sorted(seen) == [("local", 1), ("remote", 2)]

    handle.cancel()
    here.client().write(entry("team", "after-cancel", 3))
    # The sidecar's watcher count drops when the stream closes; no late delivery.
    wait_until(lambda: len(here.sidecar.ctx.hub) == 0, message="stream closed")  # type: ignore[union-attr]
    assert ("after-cancel", 3) not in seen


def test_watch_resumes_after_the_sidecar_restarts(sidecar_factory: SidecarFactory) -> None:
    first = sidecar_factory("pod")
    adapter = SidecarAdapter(first.socket_path)
    seen: list[str] = []
    handle = adapter.watch("*", lambda e: seen.append(e.key))
    adapter.write(entry("svc", "before", 1))
    wait_until(lambda: seen == ["before"], message="first event")
    first.stop()
    # A write while the sidecar is down, made by another pod straight to S3.
    other = sidecar_factory("other")
    other.client().write(entry("svc", "while-down", 2))
    second = sidecar_factory("pod")  # the same socket path, a new process's worth of state
    second.client().write(entry("svc", "after", 3))
    try:
        wait_until(lambda: seen == ["before", "while-down", "after"], timeout=20)
    except AssertionError as exc:
        raise AssertionError(f"missed and new events, once each: seen {seen}") from exc
    handle.cancel()
    adapter.close()


def test_errors_become_amfs_exceptions(sidecar_factory: SidecarFactory,
                                       socket_dir: Any) -> None:
    running = sidecar_factory(max_entry_bytes=4096)
    client = running.client()
    with pytest.raises(InvalidNameError) as invalid:
        client.write(entry("a/../b", "k", 1))
    assert invalid.value.field == "entity_path"
    assert "segment '..' is not allowed" in str(invalid.value)

    client.write(entry("svc", "k", 1))
    with pytest.raises(VersionConflictError) as conflict:
        client.write(entry("svc", "k", 2, version=5))
    assert (conflict.value.entity_path, conflict.value.key) == ("svc", "k")

    with pytest.raises(EntryTooLargeError) as too_large:
        client.write(entry("svc", "big", "x" * 10_000))
    assert too_large.value.limit == 4096

    with pytest.raises(SidecarRequestError) as bad:
        client._call("POST", "/api/v1/search", {"limit": -1})
    assert bad.value.status == 422

    assert client.read("svc", "missing") is None
    assert client.history("svc", "missing") == []
    assert client.read_at_version("svc", "k", 7) is None

    read_only = sidecar_factory("ro", read_only=True).client()
    with pytest.raises(SidecarReadOnlyError):
        read_only.write(entry("svc", "k", 1))

    nowhere = SidecarAdapter(socket_dir / "nothing.sock")
    with pytest.raises(SidecarUnavailableError, match="cannot reach the sidecar"):
        nowhere.read("svc", "k")


def test_list_pages_beyond_one_response(sidecar: RunningSidecar,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from amfs_sidecar import client as client_module

    monkeypatch.setattr(client_module, "PAGE_SIZE", 3)
    adapter = sidecar.client()
    for i in range(8):
        adapter.write(entry("svc", f"k{i}", i))
    assert [e.key for e in adapter.list("svc")] == [f"k{i}" for i in range(8)]
    assert adapter.count_outcomes() == 0
