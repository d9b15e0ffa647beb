"""Search, outcomes, stats, health/readiness and the OpenAPI document over the socket."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_spec_validator import validate

from amfs_sidecar.openapi import OPERATIONS
from tests.fixtures.sidecar import RunningSidecar, SidecarFactory

from .test_api_entries import get, post


async def seed(s: Any) -> None:
    rows = [
        ("svc/api", "retry", "retry three times", 0.9, "agent-a"),
        ("svc/api", "timeout", "timeout is 30s", 0.5, "agent-b"),
        ("svc/api/v2", "retry", "retry with backoff", 0.8, "agent-a"),
        ("svc/db", "pool", "pool of ten", 0.3, "agent-b"),
    ]
    for entity, key, value, confidence, agent in rows:
        status, _ = await post(s, "/api/v1/entries", {
            "entity_path": entity, "key": key, "value": value, "confidence": confidence,
            "agent_id": agent})
        assert status == 201


async def search(s: Any, **body: Any) -> list[tuple[str, str]]:
    status, result = await post(s, "/api/v1/search", body)
    assert status == 200, result
    assert isinstance(result, list)  # a bare list, as amfs-http-server answers
    return [(e["entity_path"], e["key"]) for e in result]


@pytest.mark.parametrize("cache_bytes", [64 * 1024 * 1024, 0], ids=["cached", "no-cache"])
async def test_search_applies_amfs_semantics(sidecar_factory: SidecarFactory,
                                             cache_bytes: int) -> None:
    sidecar = sidecar_factory(cache_bytes=cache_bytes)
    async with sidecar.session() as s:
        await seed(s)
        assert await search(s, query="RETRY") == [("svc/api", "retry"), ("svc/api/v2", "retry")]
        assert await search(s, entity_path="svc/api") == [("svc/api", "retry"),
                                                          ("svc/api", "timeout")]
        assert await search(s, entity_path="svc/api", include_descendants=True) == [
            ("svc/api", "retry"), ("svc/api/v2", "retry"), ("svc/api", "timeout")]
        assert await search(s, min_confidence=0.6) == [("svc/api", "retry"),
                                                       ("svc/api/v2", "retry")]
        assert await search(s, agent_id="agent-b", limit=1) == [("svc/api", "timeout")]
        assert await search(s, entity_paths=["svc/db", "svc/api/v2"]) == [
            ("svc/api/v2", "retry"), ("svc/db", "pool")]
        status, body = await post(s, "/api/v1/search", {"limit": 0})
        assert status == 422 and "limit" in body["detail"]
        status, body = await post(s, "/api/v1/search", {"entity_path": "a/./b"})
        assert status == 400 and "segment '.' is not allowed" in body["detail"]


async def test_outcome_commit_updates_cited_entries_and_lists(sidecar: RunningSidecar) -> None:
    async with sidecar.session() as s:
        await seed(s)
        status, committed = await post(s, "/api/v1/outcomes", {
            "outcome_ref": "deploy-42", "outcome_type": "failure",
            "causal_entry_keys": ["svc/api/retry"], "agent_id": "agent-a"})
        assert status == 201, committed
        assert committed["outcome"]["outcome_ref"] == "deploy-42"
        assert (committed["outcome_ref"], committed["outcome_type"],
                committed["affected_entries"]) == ("deploy-42", "failure", 1)
        assert [(e["entity_path"], e["key"], e["version"]) for e in committed["entries"]] == [
            ("svc/api", "retry", 2)]
        assert committed["entries"][0]["confidence"] < 0.9
        # Read-your-writes covers the entries an outcome touched.
        _, read = await get(s, "/api/v1/entries/svc/api/retry")
        assert read["version"] == 2 and read["outcome_count"] == 1

        await post(s, "/api/v1/outcomes", {"outcome_ref": "deploy-43", "outcome_type": "success",
                                           "causal_entry_keys": ["svc/db/pool"],
                                           "agent_id": "agent-b"})
        status, listed = await get(s, "/api/v1/outcomes")
        assert status == 200
        assert [o["outcome_ref"] for o in listed["outcomes"]] == ["deploy-43", "deploy-42"]
        assert [o["agent_id"] for o in listed["outcomes"]] == ["agent-b", "agent-a"]
        _, one = await get(s, "/api/v1/outcomes", outcome_ref="deploy-42")
        assert [o["outcome_ref"] for o in one["outcomes"]] == ["deploy-42"]
        _, scoped = await get(s, "/api/v1/outcomes", entity_path="svc/db")
        assert [o["outcome_ref"] for o in scoped["outcomes"]] == ["deploy-43"]

        status, body = await post(s, "/api/v1/outcomes", {
            "outcome_ref": "a/b", "outcome_type": "SUCCESS", "agent_id": "x"})
        assert status == 201 and body["outcome_ref"] == "a/b"
        _, slashed = await get(s, "/api/v1/outcomes", outcome_ref="a/b")
        assert [o["outcome_ref"] for o in slashed["outcomes"]] == ["a/b"]
        status, body = await post(s, "/api/v1/outcomes", {
            "outcome_ref": "x", "outcome_type": "meh", "agent_id": "x"})
        assert status == 422 and "outcome_type" in body["detail"]
        status, body = await get(s, "/api/v1/outcomes", since="yesterday")
        assert status == 422 and "since" in body["detail"]


async def test_stats_count_from_the_index(fault_proxy: Any, sidecar_factory: SidecarFactory,
                                          s3_settings: Any) -> None:
    settings = s3_settings.model_copy(update={"endpoint_url": fault_proxy.url,
                                              "resync_interval": 300.0})
    running = sidecar_factory("counted", settings=settings)
    async with running.session() as s:
        await seed(s)
        await post(s, "/api/v1/entries", {"entity_path": "svc/db", "key": "pool", "value": 1,
                                          "agent_id": "a"})
        await post(s, "/api/v1/outcomes", {"outcome_ref": "o1", "outcome_type": "success",
                                           "agent_id": "a"})
        fault_proxy.requests.clear()
        status, stats = await get(s, "/api/v1/stats")
    assert status == 200
    assert (stats["entries"], stats["versions"], stats["outcomes"]) == (4, 5, 1)
    # amfs-http-server's aggregates, over current entries.
    assert (stats["total_entries"], stats["total_entities"], stats["total_agents"]) == (4, 3, 3)
    assert stats["entities"] == {"svc/api": 2, "svc/api/v2": 1, "svc/db": 1}
    assert stats["agents"] == {"agent-a": 2, "agent-b": 1, "a": 1}
    assert (stats["confidence_min"], stats["confidence_max"]) == (0.5, 1.0)
    assert stats["oldest_entry_at"] <= stats["newest_entry_at"]
    assert stats["synced"] is True and stats["conditional_writes_supported"] is True
    assert stats["cache"]["items"] == 4
    # Counting listed nothing: every S3 request since is the poller's journal LIST.
    assert all("journal" in path for _, path in fault_proxy.requests), fault_proxy.requests


async def test_health_ready_and_openapi(sidecar: RunningSidecar) -> None:
    async with sidecar.session() as s:
        assert await get(s, "/health") == (200, {"status": "ok"})
        status, ready = await get(s, "/ready")
        assert status == 200 and ready["status"] == "ready"
        status, doc = await get(s, "/openapi.json")
    assert status == 200
    validate(doc)
    schemas = doc["components"]["schemas"]
    # The document is generated from the models that validate requests.
    assert set(schemas["WriteRequest"]["required"]) == {"entity_path", "key"}
    assert schemas["WriteRequest"]["properties"]["confidence"]["maximum"] == 1.0
    write = doc["paths"]["/api/v1/entries"]["post"]
    assert {"201", "400", "409", "413", "422", "503"} <= set(write["responses"])


def test_openapi_lists_exactly_the_served_routes(sidecar: RunningSidecar) -> None:
    app_routes = {
        (route.method.lower(), route.resource.canonical.replace("{path}", "{entity_path}/{key}"))
        for route in sidecar.sidecar._runners[0].app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {(op.method, op.path) for op in OPERATIONS}
    assert app_routes == documented


@pytest.mark.parametrize("path", ["/ready", "/health"])
def test_probes_on_the_metrics_port(sidecar: RunningSidecar, path: str) -> None:
    import urllib.request

    with urllib.request.urlopen(sidecar.metrics_url + path, timeout=5) as response:
        assert response.status == 200


async def test_not_ready_until_the_bucket_is_reachable(sidecar_factory: SidecarFactory,
                                                       s3_settings: Any) -> None:
    import urllib.error
    import urllib.request

    missing = s3_settings.model_copy(update={"bucket": "no-such-bucket-here"})
    running = sidecar_factory("unready", settings=missing, wait=False)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(running.metrics_url + "/ready", timeout=5)
    assert caught.value.code == 503
    from tests.fixtures.sidecar import wait_until

    def detail() -> str:
        response = running.client().request("GET", "/ready")
        assert response.status == 503
        return str(response.json()["detail"] or "")

    assert "does not exist" in wait_until(detail, message="a readiness reason")
    async with running.session() as s:
        assert await get(s, "/health") == (200, {"status": "ok"})
