"""Entry routes over the real Unix socket, against each test S3 provider."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fixtures.s3 import all_keys
from tests.fixtures.sidecar import RunningSidecar, SidecarFactory

WRITE = {"entity_path": "checkout-service", "key": "retry-pattern", "value": {"max": 3},
         "agent_id": "agent-a"}


async def post(session: Any, path: str, body: Any) -> tuple[int, Any]:
    async with session.post(path, json=body) as response:
        return response.status, await response.json()


async def get(session: Any, path: str, **params: Any) -> tuple[int, Any]:
    async with session.get(path, params=params) as response:
        return response.status, await response.json()


async def test_write_then_read_returns_the_stored_entry(sidecar: RunningSidecar) -> None:
    async with sidecar.session() as s:
        status, written = await post(s, "/api/v1/entries", WRITE)
        assert status == 201
        assert (written["entity_path"], written["key"], written["version"]) == (
            "checkout-service", "retry-pattern", 1)
        assert written["provenance"]["agent_id"] == "agent-a"
        status, read = await get(s, "/api/v1/entries/checkout-service/retry-pattern")
    assert status == 200
    assert read == written


async def test_read_your_writes_are_served_from_the_index_without_s3(
    sidecar_factory: SidecarFactory, s3_client: Any, s3_settings: Any
) -> None:
    # No poll or resync inside the test: their LISTs would land in the counted window
    # whenever the provider is slow enough (SeaweedFS under load: 7 LISTs instead of 6).
    sidecar = sidecar_factory(settings=s3_settings.model_copy(
        update={"poll_interval": 300.0, "resync_interval": 300.0}))
    async with sidecar.session() as s:
        for value in ("one", "two", "three"):
            status, _ = await post(s, "/api/v1/entries", {**WRITE, "value": value})
            assert status == 201
        gets_before = sidecar.metric("amfs_sidecar_s3_requests_total", operation="GetObject",
                                     outcome="success") or 0
        lists_before = sidecar.metric("amfs_sidecar_s3_requests_total",
                                      operation="ListObjectsV2", outcome="success") or 0
        status, read = await get(s, "/api/v1/entries/checkout-service/retry-pattern")
    assert status == 200
    assert (read["version"], read["value"]) == (3, "three")
    # The sidecar's own writes went straight into index and cache: no S3 round trip.
    assert (sidecar.metric("amfs_sidecar_s3_requests_total", operation="GetObject",
                           outcome="success") or 0) == gets_before
    assert (sidecar.metric("amfs_sidecar_s3_requests_total", operation="ListObjectsV2",
                           outcome="success") or 0) == lists_before
    versions = [k for k in all_keys(s3_client, s3_settings.bucket) if "/entries/" in k]
    assert sorted(v.rsplit("/", 1)[1] for v in versions) == ["v1.json", "v2.json", "v3.json"]


async def test_consistent_read_sees_a_write_the_index_has_not_polled_yet(
    sidecar_factory: SidecarFactory, s3_settings: Any
) -> None:
    from amfs_s3.adapter import S3Adapter

    # A poll interval far beyond the test: only consistent=true can see the new write.
    running = sidecar_factory(settings=s3_settings.model_copy(update={"poll_interval": 300.0}))
    other = S3Adapter.from_settings(s3_settings)
    async with running.session() as s:
        assert (await post(s, "/api/v1/entries", WRITE))[0] == 201
        from amfs_core.models import MemoryEntry, Provenance

        current = other.read("checkout-service", "retry-pattern")
        assert current is not None
        other.write(MemoryEntry(entity_path="checkout-service", key="retry-pattern",
                                value="from another pod",
                                provenance=Provenance(agent_id="b", session_id="s",
                                                      written_at=current.provenance.written_at)))
        _, cached = await get(s, "/api/v1/entries/checkout-service/retry-pattern")
        status, fresh = await get(s, "/api/v1/entries/checkout-service/retry-pattern",
                                  consistent="true")
        _, after = await get(s, "/api/v1/entries/checkout-service/retry-pattern")
    other.close()
    assert cached["version"] == 1
    assert status == 200 and (fresh["version"], fresh["value"]) == (2, "from another pod")
    # The consistent read also moved the index forward.
    assert after["version"] == 2


async def test_read_a_historical_version_and_history(sidecar: RunningSidecar) -> None:
    async with sidecar.session() as s:
        for value in ("a", "b"):
            await post(s, "/api/v1/entries", {**WRITE, "value": value})
        status, first = await get(s, "/api/v1/entries/checkout-service/retry-pattern",
                                  version="1")
        assert (status, first["value"]) == (200, "a")
        status, body = await get(s, "/api/v1/entries/checkout-service/retry-pattern",
                                 version="9")
        assert (status, body) == (200, {"status": "not_found", "version": 9,
                                        "entity_path": "checkout-service",
                                        "key": "retry-pattern"})
        status, hist = await get(s, "/api/v1/history/checkout-service/retry-pattern")
        assert status == 200
        assert (hist["entity_path"], hist["key"], hist["version_count"]) == (
            "checkout-service", "retry-pattern", 2)
        assert [e["value"] for e in hist["versions"]] == ["a", "b"]
        status, body = await get(s, "/api/v1/history/checkout-service/nothing")
        assert (status, body) == (200, {"entity_path": "checkout-service", "key": "nothing",
                                        "version_count": 0, "versions": []})


async def test_missing_entry_is_200_not_found_as_upstream(sidecar: RunningSidecar) -> None:
    async with sidecar.session() as s:
        status, body = await get(s, "/api/v1/entries/nobody/nothing")
        assert (status, body) == (200, {"status": "not_found", "entity_path": "nobody",
                                        "key": "nothing"})
        status, body = await get(s, "/api/v1/entry", entity_path="nobody", key="a/b")
    assert (status, body) == (200, {"status": "not_found", "entity_path": "nobody",
                                    "key": "a/b"})


async def test_min_confidence_hides_a_weak_entry(sidecar: RunningSidecar) -> None:
    async with sidecar.session() as s:
        await post(s, "/api/v1/entries", {**WRITE, "confidence": 0.4})
        _, weak = await get(s, "/api/v1/entries/checkout-service/retry-pattern",
                            min_confidence="0.5")
        assert weak["status"] == "not_found"
        _, found = await get(s, "/api/v1/entries/checkout-service/retry-pattern",
                             min_confidence="0.3")
        assert found["version"] == 1


async def test_names_with_reserved_characters_round_trip(sidecar: RunningSidecar) -> None:
    from urllib.parse import quote

    body = {**WRITE, "entity_path": "team a/svc?x", "key": "50% off#1"}
    async with sidecar.session() as s:
        assert (await post(s, "/api/v1/entries", body))[0] == 201
        path = "/".join(quote(p, safe="") for p in ["team a", "svc?x", "50% off#1"])
        from yarl import URL

        async with s.get(URL("/api/v1/entries/" + path, encoded=True)) as response:
            assert response.status == 200
            read = await response.json()
    assert (read["entity_path"], read["key"]) == ("team a/svc?x", "50% off#1")


async def test_expected_version_conflict_is_409_and_writes_nothing(
    sidecar: RunningSidecar, s3_client: Any, s3_settings: Any
) -> None:
    async with sidecar.session() as s:
        await post(s, "/api/v1/entries", WRITE)
        await post(s, "/api/v1/entries", WRITE)
        status, ok = await post(s, "/api/v1/entries", {**WRITE, "expected_version": 2})
        assert (status, ok["version"]) == (201, 3)
        status, body = await post(s, "/api/v1/entries", {**WRITE, "expected_version": 1})
    assert status == 409
    assert body["type"] == "VersionConflictError"
    assert "checkout-service/retry-pattern" in body["detail"]
    keys = [k for k in all_keys(s3_client, s3_settings.bucket) if "/entries/" in k]
    assert len(keys) == 3


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({**WRITE, "entity_path": "a/../b"}, 400, "entity_path segment '..' is not allowed"),
        ({**WRITE, "key": "k" * 256}, 400, "key segment 'kkk"),
        ({**WRITE, "branch": "dev"}, 422, "branch 'dev' is not available"),
        ({**WRITE, "memory_type": "rumour"}, 422, "memory_type"),
        ({**WRITE, "entity_path": ""}, 400, "entity_path is empty"),
        ({**WRITE, "confidence": 1.5}, 422, "confidence: Input should be less than or equal to 1"),
        ({**WRITE, "agent_id": ""}, 422, "agent_id: String should have at least 1 character"),
        ({**WRITE, "expected_version": 0}, 422, "expected_version"),
        ({"entry": {"entity_path": "a"}}, 422, "entry.key: Field required"),
    ],
)
async def test_bad_writes_are_refused_with_a_clear_error_and_nothing_written(
    sidecar: RunningSidecar, s3_client: Any, s3_settings: Any,
    body: dict[str, Any], status: int, needle: str,
) -> None:
    async with sidecar.session() as s:
        got, answer = await post(s, "/api/v1/entries", body)
    assert got == status
    assert needle in answer["detail"]
    assert [k for k in all_keys(s3_client, s3_settings.bucket) if "/entries/" in k] == []


@pytest.mark.parametrize(
    ("raw", "needle"),
    [(b"{not json", "not valid JSON"), (b"[1, 2]", "must be a JSON object, not list"),
     (b"", "request body is required")],
)
async def test_malformed_bodies_are_400(sidecar: RunningSidecar, raw: bytes, needle: str) -> None:
    async with sidecar.session() as s, s.post(
        "/api/v1/entries", data=raw, headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 400
        assert needle in (await response.json())["detail"]


async def test_oversized_entries_are_413(sidecar_factory: SidecarFactory, s3_client: Any,
                                         s3_settings: Any) -> None:
    running = sidecar_factory(max_entry_bytes=2048)
    async with running.session() as s:
        status, body = await post(s, "/api/v1/entries", {**WRITE, "value": "x" * 4096})
        assert status == 413
        assert body["type"] == "EntryTooLargeError" and body["limit"] == 2048
        assert "the maximum is 2048 bytes" in body["detail"]
        # A body far beyond the limit is refused by the HTTP layer before any parsing.
        status, body = await post(s, "/api/v1/entries", {**WRITE, "value": "x" * 200_000})
        assert status == 413
        assert "Maximum request body size" in body["detail"]
        assert (await post(s, "/api/v1/entries", WRITE))[0] == 201
    assert len([k for k in all_keys(s3_client, s3_settings.bucket) if "/entries/" in k]) == 1


async def test_full_entry_form_is_stored_as_sent(sidecar: RunningSidecar) -> None:
    entry = {"entity_path": "svc", "key": "k", "value": [1, 2], "confidence": 0.7,
             "content_hash": "abc", "provenance": {"agent_id": "x", "session_id": "s1",
                                                   "written_at": "2025-01-01T00:00:00Z"}}
    async with sidecar.session() as s:
        status, written = await post(s, "/api/v1/entries", {"entry": entry})
    assert status == 201
    assert written["content_hash"] == "abc"
    assert written["provenance"]["session_id"] == "s1"
    assert written["confidence"] == 0.7


async def test_list_pages_through_current_entries(sidecar: RunningSidecar) -> None:
    async with sidecar.session() as s:
        for entity in ("a", "a/sub", "b"):
            for key in ("k1", "k2", "k3"):
                await post(s, "/api/v1/entries", {**WRITE, "entity_path": entity, "key": key})
        await post(s, "/api/v1/entries", {**WRITE, "entity_path": "a", "key": "k1", "value": 2})

        seen: list[tuple[str, str, int]] = []
        params: dict[str, Any] = {"limit": "4"}
        while True:
            status, page = await get(s, "/api/v1/entries", **params)
            assert status == 200
            assert len(page["entries"]) <= 4
            seen += [(e["entity_path"], e["key"], e["version"]) for e in page["entries"]]
            if not page["next_cursor"]:
                break
            params["cursor"] = page["next_cursor"]
        assert len(seen) == 9 and len(set(seen)) == 9
        assert ("a", "k1", 2) in seen

        _, exact = await get(s, "/api/v1/entries", entity_path="a")
        assert {e["entity_path"] for e in exact["entries"]} == {"a"}
        _, tree = await get(s, "/api/v1/entries", entity_path="a", subtree="true")
        assert {e["entity_path"] for e in tree["entries"]} == {"a", "a/sub"}
        _, every = await get(s, "/api/v1/entries", entity_path="a", include_superseded="true")
        assert sorted((e["key"], e["version"]) for e in every["entries"]) == [
            ("k1", 1), ("k1", 2), ("k2", 1), ("k3", 1)]

        status, body = await get(s, "/api/v1/entries", cursor="%%%")
        assert status == 400 and "is not a cursor" in body["detail"]
        status, body = await get(s, "/api/v1/entries", limit="0")
        assert status == 422 and "limit" in body["detail"]
        status, body = await get(s, "/api/v1/entries", entity_path="x//y")
        assert status == 400 and "empty segment" in body["detail"]


async def test_read_only_sidecar_refuses_writes_with_403(
    sidecar_factory: SidecarFactory
) -> None:
    running = sidecar_factory(read_only=True)
    async with running.session() as s:
        status, body = await post(s, "/api/v1/entries", WRITE)
        assert status == 403 and "read-only" in body["detail"]
        status, body = await post(s, "/api/v1/outcomes", {"outcome_ref": "o", "outcome_type":
                                                          "success", "agent_id": "a"})
        assert status == 403
        _, read = await get(s, "/api/v1/entries/checkout-service/retry-pattern")
        assert read["status"] == "not_found"


async def test_s3_failures_are_503_never_404(sidecar_factory: SidecarFactory, s3_settings: Any,
                                             fault_proxy: Any) -> None:
    settings = s3_settings.model_copy(update={"endpoint_url": fault_proxy.url})
    running = sidecar_factory(settings=settings, adapter_options={"max_attempts": 1})
    async with running.session() as s:
        # "entries" also matches a LIST, whose prefix parameter is URL-encoded.
        fault_proxy.add(method="GET", path_contains="entries", status=500, times=-1)
        fault_proxy.add(method="PUT", path_contains="/entries/", status=500, times=-1)
        status, body = await get(s, "/api/v1/entries/checkout-service/retry-pattern",
                                 consistent="true")
        assert status == 503 and "storage unavailable" in body["detail"]
        status, body = await post(s, "/api/v1/entries", WRITE)
        assert status == 503
        fault_proxy.clear()
        assert (await post(s, "/api/v1/entries", WRITE))[0] == 201


async def test_unknown_routes_and_methods_answer_json(sidecar: RunningSidecar) -> None:
    async with sidecar.session() as s:
        async with s.get("/api/v1/nothing") as response:
            assert response.status == 404
            assert "detail" in json.loads(await response.read())
        async with s.delete("/api/v1/entries") as response:
            assert response.status == 405
            assert "detail" in json.loads(await response.read())
        status, body = await get(s, "/api/v1/entries/only-one-segment")
        assert status == 400 and "must name an entity and a key" in body["detail"]


S3_ROUTES = [
    ("GET", "/api/v1/entries/svc/k?consistent=true", None),
    ("GET", "/api/v1/entries/svc/k?version=2", None),
    ("POST", "/api/v1/entries", WRITE),
    ("GET", "/api/v1/entries?include_superseded=true", None),
    ("GET", "/api/v1/history/svc/k", None),
    ("POST", "/api/v1/outcomes", {"outcome_ref": "o", "outcome_type": "success",
                                  "agent_id": "a"}),
    ("GET", "/api/v1/outcomes", None),
]


async def test_every_route_that_needs_s3_answers_503_when_s3_fails(
    sidecar_factory: SidecarFactory, s3_settings: Any, fault_proxy: Any
) -> None:
    settings = s3_settings.model_copy(update={"endpoint_url": fault_proxy.url})
    running = sidecar_factory(settings=settings, adapter_options={"max_attempts": 1})
    fault_proxy.add(path_contains="", status=500, times=-1)
    async with running.session() as s:
        for method, path, body in S3_ROUTES:
            async with s.request(method, path, json=body) as response:
                answer = await response.json()
                assert response.status == 503, (method, path, answer)
                assert answer["detail"].startswith("storage unavailable: S3"), answer
        # Routes served from the index keep working while S3 is down.
        assert (await get(s, "/api/v1/stats"))[0] == 200
        assert (await get(s, "/api/v1/entries"))[0] == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "needle"),
    [
        ("GET", "/api/v1/entries/svc/k?version=abc", None, 422, "version"),
        ("GET", "/api/v1/entries/svc/k?consistent=maybe", None, 422, "consistent"),
        ("GET", "/api/v1/entries/svc/k?branch=dev", None, 422, "branch"),
        ("GET", "/api/v1/entry?entity_path=svc", None, 422, "key"),
        ("GET", "/api/v1/entries/a/%2E%2E/k", None, 400, "segment '..' is not allowed"),
        ("GET", "/api/v1/history/svc", None, 400, "must name an entity and a key"),
        ("GET", "/api/v1/history/a/%01/k", None, 400, "control character"),
        ("GET", "/api/v1/outcomes?entity_path=a//b", None, 400, "empty segment"),
        ("GET", "/api/v1/outcomes?limit=5000", None, 422, "limit"),
        ("POST", "/api/v1/search", [1], 400, "must be a JSON object"),
        ("POST", "/api/v1/outcomes", {"record": {"outcome_ref": "x"}}, 422, "record."),
        ("POST", "/api/v1/outcomes", {"outcome_ref": "o", "outcome_type": "success",
                                      "agent_id": "a", "causal_entry_keys": ["k" * 3000]},
         413, "the maximum is 2048 bytes"),
    ],
)
async def test_route_errors(sidecar_factory: SidecarFactory, method: str, path: str, body: Any,
                            status: int, needle: str) -> None:
    from yarl import URL

    running = sidecar_factory(max_entry_bytes=2048)
    async with running.session() as s, s.request(method, URL(path, encoded=True),
                                                 json=body) as response:
        answer = await response.json()
    assert response.status == status, answer
    assert needle in answer["detail"]
