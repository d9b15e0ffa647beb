"""What amfs-http-server's clients rely on, over the sidecar's socket: request
tolerance, agent ids, the query routes, paging by offset, and the refusals that
stay strict (duplicate JSON keys, names no write could store)."""

from __future__ import annotations

import socket
from typing import Any

from tests.fixtures.s3 import all_keys
from tests.fixtures.sidecar import RunningSidecar, SidecarFactory

from .test_api_entries import get, post


async def test_unknown_fields_and_parameters_are_ignored(sidecar: RunningSidecar) -> None:
    # What HttpAdapter.write and commit_outcome send beyond what the sidecar uses.
    write = {"entity_path": "svc", "key": "k", "value": 1, "shared": True, "branch": "main",
             "include_scope": True, "agent_id": "a", "session_id": "s-1", "surprise": [1]}
    outcome = {"outcome_ref": "o-1", "outcome_type": "SUCCESS", "causal_entry_keys": None,
               "trace_follows": True, "session_metadata": {"x": 1}, "attempts": [],
               "causal_entry_versions": {"svc/k": 1}, "entity_paths": ["svc"],
               "situation": "s", "task_input": "t", "tool_calls": []}
    async with sidecar.session() as s:
        status, written = await post(s, "/api/v1/entries", write)
        assert status == 201 and written["provenance"]["session_id"] == "s-1"
        status, read = await get(s, "/api/v1/entries/svc/k", agent_id="cli", offset="3")
        assert status == 200 and read["value"] == 1
        assert (read["evidence_status"], read["posterior"]) == ("untested", {"p": 0.5, "n": 0})
        status, found = await post(s, "/api/v1/search", {"query": "", "depth": 3,
                                                         "sort_by": "confidence"})
        assert status == 200 and [e["key"] for e in found] == ["k"]
        status, committed = await post(s, "/api/v1/outcomes", outcome)
        assert status == 201 and committed["outcome_type"] == "success"


async def test_agent_id_comes_from_the_body_the_header_or_the_sidecar(
    sidecar_factory: SidecarFactory,
) -> None:
    running = sidecar_factory(agent_id="pod-x")
    body = {"entity_path": "svc", "key": "k", "value": 1}
    async with running.session() as s:
        _, named = await post(s, "/api/v1/entries", {**body, "agent_id": "in-body"})
        async with s.post("/api/v1/entries", json=body,
                          headers={"X-AMFS-Agent-Id": "in-header"}) as response:
            headed = await response.json()
        _, default = await post(s, "/api/v1/entries", body)
        async with s.post("/api/v1/outcomes", json={"outcome_ref": "o", "outcome_type":
                                                    "success"}) as response:
            outcome = await response.json()
    assert [e["provenance"]["agent_id"] for e in (named, headed, default)] == [
        "in-body", "in-header", "pod-x"]
    assert outcome["outcome"]["agent_id"] == "pod-x"


async def test_the_default_agent_id_is_the_hostname(sidecar: RunningSidecar) -> None:
    async with sidecar.session() as s:
        _, written = await post(s, "/api/v1/entries", {"entity_path": "a", "key": "k"})
    assert written["provenance"]["agent_id"] == socket.gethostname()
    assert written["value"] is None


async def test_keys_with_a_slash_through_the_query_routes(sidecar: RunningSidecar) -> None:
    async with sidecar.session() as s:
        await post(s, "/api/v1/entries", {"entity_path": "a", "key": "b/c", "value": "slash"})
        await post(s, "/api/v1/entries", {"entity_path": "a/b", "key": "c", "value": "nest"})
        await post(s, "/api/v1/entries", {"entity_path": "a", "key": "b/c", "value": "two"})
        _, slashed = await get(s, "/api/v1/entry", entity_path="a", key="b/c")
        _, nested = await get(s, "/api/v1/entries/a/b/c")
        _, by_query = await get(s, "/api/v1/entry", entity_path="a/b", key="c")
        _, first = await get(s, "/api/v1/entry", entity_path="a", key="b/c", version="1")
        _, history = await get(s, "/api/v1/history", entity_path="a", key="b/c")
        _, listed = await get(s, "/api/v1/entries", entity_path="a")
    assert (slashed["value"], slashed["version"]) == ("two", 2)
    assert nested["value"] == by_query["value"] == "nest"
    assert first["value"] == "slash"
    assert [v["value"] for v in history["versions"]] == ["slash", "two"]
    assert [e["key"] for e in listed["entries"]] == ["b/c"]


async def test_history_filters_by_time(sidecar: RunningSidecar) -> None:
    async with sidecar.session() as s:
        _, one = await post(s, "/api/v1/entries", {"entity_path": "a", "key": "k", "value": 1})
        _, two = await post(s, "/api/v1/entries", {"entity_path": "a", "key": "k", "value": 2})
        since = two["provenance"]["written_at"]
        _, later = await get(s, "/api/v1/history/a/k", since=since)
        _, earlier = await get(s, "/api/v1/history/a/k", until=one["provenance"]["written_at"])
    assert [v["value"] for v in later["versions"]] == [2] and later["version_count"] == 1
    assert [v["value"] for v in earlier["versions"]] == [1]


async def test_list_pages_by_offset_with_the_total(sidecar: RunningSidecar) -> None:
    async with sidecar.session() as s:
        for n in range(7):
            await post(s, "/api/v1/entries", {"entity_path": "p", "key": f"k{n}", "value": n})
        await post(s, "/api/v1/entries", {"entity_path": "p", "key": "k0", "value": "v2"})
        seen: list[str] = []
        while True:
            _, page = await get(s, "/api/v1/entries", limit="3", offset=str(len(seen)))
            assert page["total"] == 7
            if not page["entries"]:
                break
            seen += [e["key"] for e in page["entries"]]
        _, every = await get(s, "/api/v1/entries", include_superseded="true", limit="5",
                             offset="5")
    assert seen == [f"k{n}" for n in range(7)]
    assert every["total"] == 8 and len(every["entries"]) == 3


async def test_api_health_has_upstreams_shape(sidecar: RunningSidecar) -> None:
    async with sidecar.session() as s:
        status, body = await get(s, "/api/v1/health")
    assert status == 200
    assert body["status"] == "ok" and body["version"] and body["schema_version"]


async def test_a_duplicate_json_key_is_refused(sidecar: RunningSidecar, s3_client: Any,
                                               bucket: str) -> None:
    raw = b'{"entity_path": "svc", "key": "k", "value": 1, "key": "other"}'
    nested = b'{"entity_path": "svc", "key": "k", "value": {"a": 1, "a": 2}}'
    async with sidecar.session() as s:
        for body in (raw, nested):
            async with s.post("/api/v1/entries", data=body,
                              headers={"Content-Type": "application/json"}) as response:
                answer = await response.json()
            assert response.status == 400, answer
            assert "more than once" in answer["detail"]
        assert answer["field"] == "a"
    assert [k for k in all_keys(s3_client, bucket) if "/entries/" in k] == []


async def test_a_read_of_a_name_no_write_could_store_is_the_writes_400(
    sidecar: RunningSidecar,
) -> None:
    long_path = "/".join(["x" * 200] * 5)
    async with sidecar.session() as s:
        status, written = await post(s, "/api/v1/entries", {"entity_path": long_path,
                                                            "key": "k", "value": 1})
        answers = [await get(s, f"/api/v1/entries/{long_path}/k"),
                   await get(s, "/api/v1/entry", entity_path=long_path, key="k"),
                   await get(s, f"/api/v1/history/{long_path}/k")]
    assert status == 400 and "1024 bytes" in written["detail"]
    for got, body in answers:
        assert (got, body["type"], body["detail"]) == (400, "InvalidNameError", written["detail"])


async def test_a_name_with_a_newline_is_refused_by_the_naming_rules(
    sidecar: RunningSidecar,
) -> None:
    from yarl import URL

    async with sidecar.session() as s:
        for route in ("entries", "history"):
            url = URL(f"/api/v1/{route}/svc/a%0Ab", encoded=True)
            async with s.get(url) as response:
                answer = await response.json()
            assert response.status == 400, answer
            assert "control character" in answer["detail"]
