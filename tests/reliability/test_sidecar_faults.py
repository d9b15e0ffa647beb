"""The sidecar under S3 faults, injected by a real HTTP proxy in front of moto.

The sidecar's only S3 endpoint is the :class:`FaultProxy`. Transient faults are
retried and the API call succeeds; persistent faults reach the caller as a 503
with ``{"detail": ...}`` naming the object (never a hang, never a 500); every
acknowledged (201) write is in S3 and versions are contiguous; ``/ready`` turns
503 during an outage and 200 after it; and the poller comes back after the
outage and streams every change another pod made exactly once, in order.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from amfs_s3 import S3Adapter
from amfs_s3.config import S3Settings
from tests.fixtures.s3 import all_keys
from tests.fixtures.s3_proxy import FaultProxy, Rule
from tests.fixtures.sidecar import RunningSidecar, SidecarFactory, await_until
from tests.integration.sidecar.sse import SSE, EventReader
from tests.integration.test_adapter import make_entry

ENTRIES = "amfs/default/entries/"
JOURNAL = "amfs/default/journal/"
# Object paths carry the key verbatim; a LIST carries its prefix URL-encoded in the
# query string, so "/entries/" matches version objects and never a listing.
VERSION_OBJECT = "/entries/"
JOURNAL_OBJECT = "/journal/"
LISTING = "list-type=2"
# botocore counts the first try: two attempts, so one fault is retried and two are not.
ATTEMPTS = 2
ADAPTER_OPTIONS = {"max_attempts": ATTEMPTS, "connect_timeout": 1.0, "read_timeout": 1.0}

FAULTS: dict[str, dict[str, Any]] = {
    "500 InternalError": {"status": 500},
    "503 SlowDown": {"status": 503},
    "connection reset": {"reset": True},
    "stall past the read timeout": {"stall": 1.5},
}
# A client that waits this long has met a hang, not a slow answer.
HANG = aiohttp.ClientTimeout(total=30)


def listing_of(entity: str, key: str) -> str:
    """What a LIST of one key's versions carries in its query (the poller's never does)."""
    return f"prefix=amfs%2Fdefault%2Fentries%2F{entity}%2F{key}%2F"


@pytest.fixture
def behind_proxy(
    sidecar_factory: SidecarFactory, s3_settings: S3Settings, fault_proxy: FaultProxy
) -> Callable[..., RunningSidecar]:
    """``make(**adapter_options)``: a ready sidecar whose S3 endpoint is the proxy."""

    def make(name: str = "faulty", **options: Any) -> RunningSidecar:
        settings = s3_settings.model_copy(update={"endpoint_url": fault_proxy.url})
        return sidecar_factory(name, settings=settings,
                               adapter_options={**ADAPTER_OPTIONS, **options})

    return make


@pytest.fixture
def other_pod(s3_settings: S3Settings) -> Iterator[S3Adapter]:
    """Another writer on the same bucket, straight to moto: it never sees a fault."""
    with S3Adapter.from_settings(s3_settings, writer_id="other-pod") as adapter:
        yield adapter


def session(running: RunningSidecar) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url="http://localhost", timeout=HANG,
        connector=aiohttp.UnixConnector(path=str(running.socket_path)),
    )


def body(entity: str, key: str, value: Any = "v", **extra: Any) -> dict[str, Any]:
    return {"entity_path": entity, "key": key, "value": value, "agent_id": "agent-a", **extra}


async def call(s: aiohttp.ClientSession, method: str, path: str, **kwargs: Any
               ) -> tuple[int, Any]:
    async with s.request(method, path, **kwargs) as response:
        raw = await response.read()
        assert response.content_type == "application/json", (response.status, raw[:200])
        return response.status, json.loads(raw)


def stored_versions(s3_client: Any, bucket: str, entity: str, key: str) -> list[int]:
    prefix = f"{ENTRIES}{entity}/{key}/"
    return sorted(int(k[len(prefix) + 1:-len(".json")]) for k in all_keys(s3_client, bucket,
                                                                            prefix))


def journal_versions(s3_client: Any, bucket: str, entity: str, key: str) -> list[int]:
    records = [json.loads(s3_client.get_object(Bucket=bucket, Key=k)["Body"].read())
               for k in all_keys(s3_client, bucket, JOURNAL)]
    return sorted(r["version"] for r in records
                  if (r.get("entity_path"), r.get("key")) == (entity, key))


def assert_storage_error(status: int, error: Any, object_key: str) -> None:
    """A 503 that says what failed, in the API's error shape, and no traceback."""
    assert status == 503, (status, error)
    assert set(error) >= {"detail", "type"}, error
    assert error["detail"].startswith("storage unavailable: "), error
    assert object_key in error["detail"], error
    assert "Traceback" not in error["detail"]


# ----------------------------------------------------------------------
# transient faults are retried
# ----------------------------------------------------------------------


TRANSIENT = {**FAULTS, "response lost after the write": {"drop_after_forward": True}}


@pytest.mark.parametrize("fault", list(TRANSIENT), ids=list(TRANSIENT))
async def test_a_transient_fault_on_a_write_is_retried_and_the_write_lands_once(
    behind_proxy, fault_proxy: FaultProxy, s3_client, bucket, fault: str
) -> None:
    running = behind_proxy()
    version_put = fault_proxy.add(method="PUT", path_contains=VERSION_OBJECT, **TRANSIENT[fault])
    journal_put = fault_proxy.add(method="PUT", path_contains=JOURNAL_OBJECT, **TRANSIENT[fault])

    async with session(running) as s:
        status, written = await call(s, "POST", "/api/v1/entries", json=body("svc", "cfg", fault))
        assert status == 201, written
        status, read = await call(s, "GET", "/api/v1/entries/svc/cfg", params={
            "consistent": "true"})

    assert (version_put.fired, journal_put.fired) == (1, 1)
    assert (written["version"], read) == (1, written)
    # A lost response retried by the client is one version, not two.
    assert stored_versions(s3_client, bucket, "svc", "cfg") == [1]
    assert journal_versions(s3_client, bucket, "svc", "cfg") == [1]


@pytest.mark.parametrize("fault", list(FAULTS), ids=list(FAULTS))
async def test_a_transient_fault_on_a_read_is_retried(
    behind_proxy, fault_proxy: FaultProxy, fault: str
) -> None:
    running = behind_proxy()
    async with session(running) as s:
        assert (await call(s, "POST", "/api/v1/entries", json=body("svc", "cfg", "old")))[0] == 201
        assert (await call(s, "POST", "/api/v1/entries", json=body("svc", "cfg", "new")))[0] == 201
        listing = fault_proxy.add(method="GET", path_contains=listing_of("svc", "cfg"),
                                  **FAULTS[fault])
        status, current = await call(s, "GET", "/api/v1/entries/svc/cfg",
                                     params={"consistent": "true"})
        # v1 is not in the cache (it holds the current version): one GET on S3.
        version_get = fault_proxy.add(method="GET", path_contains=VERSION_OBJECT, **FAULTS[fault])
        old_status, old = await call(s, "GET", "/api/v1/entries/svc/cfg", params={"version": "1"})

    assert (listing.fired, version_get.fired) == (1, 1)
    assert (status, current["version"], current["value"]) == (200, 2, "new")
    assert (old_status, old["version"], old["value"]) == (200, 1, "old")


# ----------------------------------------------------------------------
# persistent faults: a clear 503, nothing half-written
# ----------------------------------------------------------------------


REFUSED = {k: v for k, v in FAULTS.items() if "stall" not in v}


@pytest.mark.parametrize("fault", list(REFUSED), ids=list(REFUSED))
async def test_a_write_that_keeps_failing_is_a_503_naming_the_object_and_writes_nothing(
    behind_proxy, fault_proxy: FaultProxy, s3_client, bucket, fault: str
) -> None:
    running = behind_proxy()
    before = all_keys(s3_client, bucket)
    rule = fault_proxy.add(method="PUT", path_contains=VERSION_OBJECT, times=-1, **FAULTS[fault])

    async with session(running) as s:
        status, error = await call(s, "POST", "/api/v1/entries", json=body("svc", "cfg"))
        missing = await call(s, "GET", "/api/v1/entries/svc/cfg")

    assert rule.fired == ATTEMPTS
    assert_storage_error(status, error, "amfs/default/entries/svc/cfg/v1.json")
    assert error["type"] == "S3AccessError"
    if "status" in FAULTS[fault]:
        code = "SlowDown" if FAULTS[fault]["status"] == 503 else "InternalError"
        assert f"{code} (HTTP {FAULTS[fault]['status']})" in error["detail"]
    # The failed write left no trace in the index either.
    assert missing == (200, {"status": "not_found", "entity_path": "svc", "key": "cfg"})
    assert all_keys(s3_client, bucket) == before


async def test_a_write_that_keeps_timing_out_is_a_503_not_a_hang(
    behind_proxy, fault_proxy: FaultProxy
) -> None:
    # Unlike a refusal, a timed-out PUT may still reach S3 later (the proxy
    # forwards it after the stall), as on a real network: the caller is told
    # the outcome is unknown, and a retry of the write is safe.
    running = behind_proxy()
    rule = fault_proxy.add(method="PUT", path_contains=VERSION_OBJECT, times=-1, stall=1.5)

    async with session(running) as s:
        status, error = await call(s, "POST", "/api/v1/entries", json=body("svc", "cfg"))

    assert rule.fired == ATTEMPTS
    assert_storage_error(status, error, "amfs/default/entries/svc/cfg/v1.json")
    assert "Read timeout" in error["detail"]


@pytest.mark.parametrize("fault", list(FAULTS), ids=list(FAULTS))
async def test_a_read_that_keeps_failing_is_a_503_never_a_404(
    behind_proxy, fault_proxy: FaultProxy, fault: str
) -> None:
    running = behind_proxy()
    async with session(running) as s:
        for value in ("old", "new"):
            await call(s, "POST", "/api/v1/entries", json=body("svc", "cfg", value))
        fault_proxy.add(method="GET", times=-1, **FAULTS[fault])
        listed = await call(s, "GET", "/api/v1/entries/svc/cfg", params={"consistent": "true"})
        pinned = await call(s, "GET", "/api/v1/entries/svc/cfg", params={"version": "1"})
        history = await call(s, "GET", "/api/v1/history/svc/cfg")
        # The current version is cached: it is still served while S3 fails.
        cached_status, cached = await call(s, "GET", "/api/v1/entries/svc/cfg")

    assert_storage_error(*listed, "amfs/default/entries/svc/cfg/")
    assert_storage_error(*pinned, "amfs/default/entries/svc/cfg/v1.json")
    assert_storage_error(*history, "amfs/default/entries/svc/cfg/")
    assert (cached_status, cached["value"]) == (200, "new")


async def test_an_outcome_that_keeps_failing_is_a_503_and_cites_nothing(
    behind_proxy, fault_proxy: FaultProxy, s3_client, bucket
) -> None:
    running = behind_proxy()
    async with session(running) as s:
        await call(s, "POST", "/api/v1/entries", json=body("svc", "fix", "restart"))
        before = all_keys(s3_client, bucket)
        fault_proxy.add(method="PUT", path_contains="/outcomes/", status=503, times=-1)
        status, error = await call(s, "POST", "/api/v1/outcomes", json={
            "outcome_ref": "INC-1", "outcome_type": "success",
            "causal_entry_keys": ["svc/fix"], "agent_id": "agent-a"})
        _, current = await call(s, "GET", "/api/v1/entries/svc/fix")

    assert_storage_error(status, error, "amfs/default/outcomes/INC-1.json")
    assert current["version"] == 1
    assert all_keys(s3_client, bucket) == before


# ----------------------------------------------------------------------
# concurrent API writers under a mixed fault schedule
# ----------------------------------------------------------------------


def mixed_schedule(proxy: FaultProxy) -> list[Rule]:
    """Faults with a clean pass after each, so every kind lands on some request
    and no single request meets more faults than its retry budget."""
    faults: list[tuple[str, str, dict[str, Any]]] = [
        ("PUT", VERSION_OBJECT, {"status": 503}),
        ("PUT", VERSION_OBJECT, {"drop_after_forward": True}),
        ("PUT", VERSION_OBJECT, {"reset": True}),
        ("PUT", VERSION_OBJECT, {"status": 500}),
        ("PUT", VERSION_OBJECT, {"drop_after_forward": True}),
        ("GET", LISTING, {"status": 503}),
        ("GET", LISTING, {"reset": True}),
        ("PUT", JOURNAL_OBJECT, {"status": 500}),
        ("PUT", JOURNAL_OBJECT, {"drop_after_forward": True}),
    ]
    rules: list[Rule] = []
    for method, path, action in faults:
        rules.append(proxy.add(method=method, path_contains=path, **action))
        proxy.add(method=method, path_contains=path)
    return rules


async def test_concurrent_api_writers_under_mixed_faults_keep_every_acknowledged_write(
    behind_proxy, fault_proxy: FaultProxy, s3_client, bucket
) -> None:
    # Two pods, so writes to the one key also race each other on S3 (one sidecar
    # takes its own writes to a key one at a time).
    pods = [behind_proxy(name, max_attempts=10) for name in ("pod-a", "pod-b")]
    clients, updates = 6, 6
    faults = mixed_schedule(fault_proxy)

    async def writer(s: aiohttp.ClientSession, n: int) -> list[tuple[int, Any]]:
        return [await call(s, "POST", "/api/v1/entries",
                           json=body("race", "hot", {"client": n, "update": u}))
                for u in range(updates)]

    async with session(pods[0]) as a, session(pods[1]) as b:
        batches = await asyncio.gather(*(writer((a, b)[n % 2], n) for n in range(clients)))
        answers = [answer for batch in batches for answer in batch]
        _, history = await call(a, "GET", "/api/v1/history/race/hot")

    assert all(rule.fired == 1 for rule in faults), [r for r in faults if r.fired != 1]
    assert [status for status, _ in answers] == [201] * (clients * updates)
    acknowledged = {entry["version"]: entry["value"] for _, entry in answers}
    total = clients * updates
    # Versions 1..N for N acknowledged writes: none skipped, none duplicated.
    assert sorted(acknowledged) == list(range(1, total + 1))
    assert stored_versions(s3_client, bucket, "race", "hot") == list(range(1, total + 1))
    # At least once: a record whose PUT answer was lost is written again.
    assert sorted(set(journal_versions(s3_client, bucket, "race", "hot"))) == list(
        range(1, total + 1))
    assert {e["version"]: e["value"] for e in history["versions"]} == acknowledged


# ----------------------------------------------------------------------
# an outage: /ready, and the poller delivering every change once, in order
# ----------------------------------------------------------------------


@asynccontextmanager
async def stream(s: aiohttp.ClientSession, scope: str = "*") -> AsyncIterator[EventReader]:
    async with s.get("/api/v1/stream", params={"entity_path": scope}) as response:
        assert response.status == 200
        reader = EventReader(response)
        await reader.comment("connected")
        yield reader


def names(events: list[SSE]) -> list[tuple[str, str, int]]:
    return [(e.data["entity_path"], e.data["key"], e.data["version"]) for e in events]


async def events_until(reader: EventReader, entity: str, key: str, timeout: float = 20
                       ) -> list[SSE]:
    """Every event up to and including the first about *entity*/*key*."""
    got: list[SSE] = []
    while not got or (got[-1].data["entity_path"], got[-1].data["key"]) != (entity, key):
        got.append(await reader.next(timeout))
    return got


async def readiness(s: aiohttp.ClientSession) -> tuple[int, Any]:
    return await call(s, "GET", "/ready")


async def test_ready_turns_503_during_an_outage_and_200_after_it(
    behind_proxy, fault_proxy: FaultProxy
) -> None:
    running = behind_proxy()
    async with session(running) as s:
        await call(s, "POST", "/api/v1/entries", json=body("svc", "cached", "before"))
        assert (await readiness(s))[0] == 200
        outage = fault_proxy.add(status=503, times=-1)

        async def unready() -> Any:
            status, answer = await readiness(s)
            return answer if status == 503 else None

        answer = await await_until(unready, message="/ready turning 503 in the outage")
        write_status, error = await call(s, "POST", "/api/v1/entries",
                                         json=body("svc", "new", "during"))
        cached_status, cached = await call(s, "GET", "/api/v1/entries/svc/cached")
        metrics_ready = await metrics_status(running)
        fault_proxy.clear()
        await await_until(lambda: ready_again(s), message="/ready turning 200 after the outage")
        after_status, _ = await call(s, "POST", "/api/v1/entries", json=body("svc", "new", "after"))

    assert outage.fired >= 1
    assert (answer["status"], answer["synced"], answer["bucket_reachable"]) == (
        "unavailable", True, False)
    assert "SlowDown" in answer["detail"] and "ListObjectsV2" in answer["detail"]
    assert metrics_ready == 503  # the kubelet's probe port says the same
    assert_storage_error(write_status, error, "amfs/default/entries/svc/new/")
    assert (cached_status, cached["value"]) == (200, "before")
    assert after_status == 201


async def metrics_status(running: RunningSidecar) -> int:
    async with aiohttp.ClientSession() as s, s.get(running.metrics_url + "/ready") as response:
        return response.status


async def ready_again(s: aiohttp.ClientSession) -> bool:
    return (await readiness(s))[0] == 200


async def outage_while(proxy: FaultProxy, s: aiohttp.ClientSession,
                       changes: Callable[[], list[tuple[str, str, int]]],
                       ) -> list[tuple[str, str, int]]:
    """Every S3 request of the sidecar fails while *changes* runs, then S3 returns."""
    rule = proxy.add(status=503, times=-1)
    await await_until(lambda: unready(s), message="the poller to hit the outage")
    made = changes()
    # Polls that fail after the changes were made: the gap the poller must close.
    seen = rule.fired
    await await_until(lambda: rule.fired >= seen + 2 * ATTEMPTS,
                      message="more failed polls during the outage")
    proxy.clear()
    return made


async def unready(s: aiohttp.ClientSession) -> bool:
    return (await readiness(s))[0] == 503


async def test_the_poller_recovers_after_an_outage_and_streams_each_change_once_in_order(
    behind_proxy, fault_proxy: FaultProxy, other_pod: S3Adapter
) -> None:
    running = behind_proxy()

    def write(entity: str, key: str, value: Any) -> tuple[str, str, int]:
        entry = other_pod.write(make_entry(entity, key, value))
        return entry.entity_path, entry.key, entry.version

    async with session(running) as s, stream(s) as events:
        first = write("svc", "a", "a1")
        before = await events_until(events, "svc", "a")

        during = await outage_while(fault_proxy, s, lambda: [
            write("svc", "a", "a2"), write("svc", "b", "b1"),
            write("svc", "a", "a3"), write("svc/deep", "c", "c1"),
        ])
        await await_until(lambda: ready_again(s), message="/ready after the outage")
        marker = write("svc", "marker", "after the outage")
        after = await events_until(events, "svc", "marker")
        _, current = await call(s, "GET", "/api/v1/entries/svc/a")

    assert names(before) == [first]
    assert names(after) == [*during, marker]
    ids = [e.id for e in before + after]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert (current["version"], current["value"]) == (3, "a3")


async def test_a_change_whose_entry_cannot_be_read_is_streamed_later_not_dropped(
    behind_proxy, fault_proxy: FaultProxy, other_pod: S3Adapter
) -> None:
    running = behind_proxy()
    async with session(running) as s, stream(s) as events:
        # Every attempt at a's entry fails in the first poll that lists it; b's GET
        # succeeds meanwhile, but b must wait for a so the stream stays in order.
        rule = fault_proxy.add(method="GET", path_contains="/entries/svc/a/", status=500,
                               times=ATTEMPTS)
        a = other_pod.write(make_entry("svc", "a", "late"))
        b = other_pod.write(make_entry("svc", "b", "next"))
        got = await events_until(events, "svc", "b")
        c = other_pod.write(make_entry("svc", "c", "after"))
        got += await events_until(events, "svc", "c")

    assert rule.fired == ATTEMPTS
    assert names(got) == [(e.entity_path, e.key, e.version) for e in (a, b, c)]
    assert [e.data["value"] for e in got] == ["late", "next", "after"]


async def test_unreadable_journal_records_and_entries_do_not_stall_the_stream(
    behind_proxy, other_pod: S3Adapter, s3_client, bucket
) -> None:
    running = behind_proxy()
    layout = other_pod.layout
    async with session(running) as s, stream(s) as events:
        # Garbage a foreign writer left: a record that is not JSON, and a record
        # naming a version whose object is not a MemoryEntry. No retry can fix
        # either, so the poller skips them rather than waiting forever.
        s3_client.put_object(Bucket=bucket, Key=layout.journal_key(now_ms(), "foreign", 0),
                             Body=b"{not json")
        s3_client.put_object(Bucket=bucket, Key=layout.version_key("svc", "broken", 1),
                             Body=b'{"not": "an entry"}')
        s3_client.put_object(Bucket=bucket, Key=layout.journal_key(now_ms(), "foreign", 1),
                             Body=json.dumps({"kind": "write", "written_at_ms": now_ms(),
                                              "writer": "foreign", "entity_path": "svc",
                                              "key": "broken", "version": 1}).encode())
        good = other_pod.write(make_entry("svc", "good", "still delivered"))
        got = await events_until(events, "svc", "good")

    assert names(got) == [(good.entity_path, good.key, good.version)]


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_a_resumed_stream_gets_nothing_twice_from_a_fresh_sidecars_first_poll(
    sidecar_factory: SidecarFactory, s3_settings: S3Settings, other_pod: S3Adapter
) -> None:
    # A sidecar that just (re)started polls its look-back window, which holds
    # changes a client resuming with Last-Event-ID had from the sidecar before.
    running = sidecar_factory("fresh", settings=s3_settings.model_copy(
        update={"poll_interval": 600.0}))  # polls only when poked
    _, had = other_pod.write_with_change(make_entry("svc", "had", "before the restart"))

    async with session(running) as s, s.get(
        "/api/v1/stream", headers={"Last-Event-ID": had.journal_key}
    ) as response:
        events = EventReader(response)
        await events.comment("connected")
        new = other_pod.write(make_entry("svc", "new", "after it"))
        assert other_pod.drain_journal(30)  # its journal record is out before the poke
        running.loop.call_soon_threadsafe(running.sidecar.sync.poke)
        got = await events.next()

    assert names([got]) == [(new.entity_path, new.key, new.version)]
