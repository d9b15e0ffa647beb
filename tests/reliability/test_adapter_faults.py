"""The adapter under S3 faults, injected by a real HTTP proxy in front of moto.

Transient faults are retried and the operation succeeds; persistent faults end in
a clear ``S3AccessError``; under a mixed schedule with concurrent writers no
acknowledged write goes missing and no version is skipped or duplicated; the
watch poller comes back after an outage and delivers every change exactly once.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from amfs_core.models import MemoryEntry, OutcomeRecord, OutcomeType

from amfs_s3 import S3Adapter
from amfs_s3.config import S3Settings
from amfs_s3.exceptions import S3AccessError
from tests.fixtures.s3 import all_keys, free_port
from tests.fixtures.s3_proxy import FaultProxy, Rule
from tests.integration.test_adapter import make_entry

ENTRIES = "amfs/default/entries/"
JOURNAL = "amfs/default/journal/"
# Object paths hold the key verbatim; a LIST carries its prefix URL-encoded in
# the query, so "/entries/" matches object requests and never a listing.
VERSION_OBJECT = "/entries/"
JOURNAL_OBJECT = "/journal/"
LISTING = "list-type=2"

FAULTS: dict[str, dict[str, Any]] = {
    "500 InternalError": {"status": 500},
    "503 SlowDown": {"status": 503},
    "connection reset": {"reset": True},
}


def adapter_via(proxy: FaultProxy | str, bucket: str, **kwargs: Any) -> S3Adapter:
    endpoint = proxy.url if isinstance(proxy, FaultProxy) else proxy
    # Reads must reach S3 for its faults to matter: no bytes held from our own writes.
    kwargs.setdefault("body_cache_bytes", 0)
    adapter = S3Adapter(bucket, endpoint_url=endpoint, aws_access_key_id="testing",
                        aws_secret_access_key="testing", **kwargs)
    return adapter


def stored_versions(s3_client, bucket: str, entity_path: str, key: str) -> list[int]:  # type: ignore[no-untyped-def]
    prefix = f"{ENTRIES}{entity_path}/{key}/"
    names = [k[len(prefix):] for k in all_keys(s3_client, bucket, prefix)]
    return sorted(int(n[1:-len(".json")]) for n in names)


def journal_records(s3_client, bucket: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    return [
        json.loads(s3_client.get_object(Bucket=bucket, Key=k)["Body"].read())
        for k in sorted(all_keys(s3_client, bucket, JOURNAL))
    ]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


# ----------------------------------------------------------------------
# transient faults are retried
# ----------------------------------------------------------------------


@pytest.mark.parametrize("fault", list(FAULTS), ids=list(FAULTS))
@pytest.mark.parametrize("target", ["version PUT", "journal PUT"])
def test_a_transient_fault_on_a_write_is_retried_and_the_write_lands_once(
    fault_proxy: FaultProxy, s3_client, bucket, adapters, fault: str, target: str
) -> None:
    adapter = adapter_via(fault_proxy, bucket)
    adapters.append(adapter)
    assert adapter.conditional_writes_supported  # probe before any rule applies
    path = VERSION_OBJECT if target == "version PUT" else JOURNAL_OBJECT
    rule = fault_proxy.add(method="PUT", path_contains=path, **FAULTS[fault])

    written = adapter.write(make_entry("svc", "cfg", {"fault": fault}))
    assert adapter.drain_journal(30)  # the journal record goes out in the background

    assert rule.fired == 1
    assert written.version == 1
    assert stored_versions(s3_client, bucket, "svc", "cfg") == [1]
    stored = adapter.read("svc", "cfg")
    assert stored is not None and stored.value == {"fault": fault}
    assert [(r["key"], r["version"]) for r in journal_records(s3_client, bucket)] == [("cfg", 1)]


@pytest.mark.parametrize("fault", list(FAULTS), ids=list(FAULTS))
@pytest.mark.parametrize("target", ["LIST", "GET"])
def test_a_transient_fault_on_a_read_is_retried(
    fault_proxy: FaultProxy, bucket, adapters, fault: str, target: str
) -> None:
    adapter = adapter_via(fault_proxy, bucket)
    adapters.append(adapter)
    adapter.write(make_entry("svc", "cfg", "value"))
    path = LISTING if target == "LIST" else VERSION_OBJECT
    rule = fault_proxy.add(method="GET", path_contains=path, **FAULTS[fault])

    entry = adapter.read("svc", "cfg")

    assert rule.fired == 1
    assert entry is not None and (entry.version, entry.value) == (1, "value")


def test_consecutive_faults_within_the_retry_budget_still_succeed(
    fault_proxy: FaultProxy, s3_client, bucket, adapters
) -> None:
    adapter = adapter_via(fault_proxy, bucket, max_attempts=4)
    adapters.append(adapter)
    assert adapter.conditional_writes_supported
    fault_proxy.add(method="PUT", path_contains=VERSION_OBJECT, status=500, times=1)
    fault_proxy.add(method="PUT", path_contains=VERSION_OBJECT, reset=True, times=1)
    fault_proxy.add(method="PUT", path_contains=VERSION_OBJECT, status=500, times=1)

    assert adapter.write(make_entry("svc", "cfg", "third time lucky")).version == 1

    assert [rule.fired for rule in fault_proxy.rules] == [1, 1, 1]
    assert stored_versions(s3_client, bucket, "svc", "cfg") == [1]


def test_a_stall_shorter_than_the_read_timeout_is_waited_out_without_a_retry(
    fault_proxy: FaultProxy, s3_client, bucket, adapters
) -> None:
    adapter = adapter_via(fault_proxy, bucket, read_timeout=5.0)
    adapters.append(adapter)
    assert adapter.conditional_writes_supported
    put = fault_proxy.add(method="PUT", path_contains=VERSION_OBJECT, stall=0.5)
    get = fault_proxy.add(method="GET", path_contains=VERSION_OBJECT, stall=0.5)

    adapter.write(make_entry("svc", "cfg", "slow"))
    entry = adapter.read("svc", "cfg")

    assert (put.fired, get.fired) == (1, 1)
    assert entry is not None and entry.value == "slow"
    version_requests = [p for _, p in fault_proxy.requests if VERSION_OBJECT in p]
    assert len(version_requests) == 2  # one PUT, one GET: nothing was sent twice


def test_a_stall_longer_than_the_read_timeout_is_retried_on_a_read(
    fault_proxy: FaultProxy, bucket, adapters
) -> None:
    adapter = adapter_via(fault_proxy, bucket, read_timeout=0.5)
    adapters.append(adapter)
    adapter.write(make_entry("svc", "cfg", "patient"))
    rule = fault_proxy.add(method="GET", path_contains=VERSION_OBJECT, stall=1.5)

    entry = adapter.read("svc", "cfg")

    assert rule.fired == 1
    assert entry is not None and entry.value == "patient"


# ----------------------------------------------------------------------
# persistent faults give a clear error, and never "not found"
# ----------------------------------------------------------------------


@pytest.mark.parametrize("fault", list(FAULTS), ids=list(FAULTS))
def test_a_write_that_keeps_failing_raises_naming_the_object_and_writes_nothing(
    fault_proxy: FaultProxy, s3_client, bucket, adapters, fault: str
) -> None:
    adapter = adapter_via(fault_proxy, bucket, max_attempts=1)
    adapters.append(adapter)
    assert adapter.conditional_writes_supported
    fault_proxy.add(method="PUT", path_contains=VERSION_OBJECT, times=-1, **FAULTS[fault])

    with pytest.raises(S3AccessError) as caught:
        adapter.write(make_entry("svc", "cfg", "never"))

    assert "amfs/default/entries/svc/cfg/v1.json" in str(caught.value)
    if "status" in FAULTS[fault]:
        code = "SlowDown" if FAULTS[fault]["status"] == 503 else "InternalError"
        assert f"{code} (HTTP {FAULTS[fault]['status']})" in str(caught.value)
    assert all_keys(s3_client, bucket, "amfs/default/") == []


@pytest.mark.parametrize("fault", list(FAULTS), ids=list(FAULTS))
@pytest.mark.parametrize("target", ["LIST", "GET"])
def test_a_read_that_keeps_failing_raises_instead_of_returning_none(
    fault_proxy: FaultProxy, bucket, adapters, fault: str, target: str
) -> None:
    adapter = adapter_via(fault_proxy, bucket, max_attempts=1)
    adapters.append(adapter)
    adapter.write(make_entry("svc", "cfg", "there"))
    path = LISTING if target == "LIST" else VERSION_OBJECT
    fault_proxy.add(method="GET", path_contains=path, times=-1, **FAULTS[fault])

    with pytest.raises(S3AccessError) as caught:
        adapter.read("svc", "cfg")

    expected = "amfs/default/entries/svc/cfg/"
    assert expected in str(caught.value)


def test_list_with_an_unreadable_entry_raises_instead_of_skipping_it(
    fault_proxy: FaultProxy, bucket, adapters
) -> None:
    adapter = adapter_via(fault_proxy, bucket, max_attempts=1)
    adapters.append(adapter)
    for key in ("a", "b", "c"):
        adapter.write(make_entry("svc", key, key))
    fault_proxy.add(method="GET", path_contains="/entries/svc/b/", status=500, times=-1)

    with pytest.raises(S3AccessError, match=r"entries/svc/b/v1\.json"):
        adapter.list("svc")


def test_an_unreachable_endpoint_is_a_clear_error(bucket, adapters) -> None:
    adapter = adapter_via(f"http://127.0.0.1:{free_port()}", bucket, max_attempts=1,
                          connect_timeout=1.0)
    adapters.append(adapter)
    with pytest.raises(S3AccessError, match="Could not connect to the endpoint URL"):
        adapter.read("svc", "cfg")
    with pytest.raises(S3AccessError, match="Could not connect to the endpoint URL"):
        adapter.write(make_entry("svc", "cfg", "nowhere"))


# ----------------------------------------------------------------------
# a lost response is never applied twice
# ----------------------------------------------------------------------


def test_a_write_whose_response_is_lost_twice_is_still_one_version(
    fault_proxy: FaultProxy, s3_client, bucket, adapters
) -> None:
    adapter = adapter_via(fault_proxy, bucket)
    adapters.append(adapter)
    adapter.write(make_entry("svc", "cfg", "first"))
    rule = fault_proxy.add(method="PUT", path_contains=VERSION_OBJECT, drop_after_forward=True,
                           times=2)

    written = adapter.write(make_entry("svc", "cfg", "second"))

    assert rule.fired == 2
    assert written.version == 2
    assert stored_versions(s3_client, bucket, "svc", "cfg") == [1, 2]
    assert [e.value for e in adapter.history("svc", "cfg")] == ["first", "second"]
    records = journal_records(s3_client, bucket)
    assert [(r["key"], r["version"]) for r in records] == [("cfg", 1), ("cfg", 2)]


def test_a_versioned_write_whose_response_is_lost_does_not_conflict_with_itself(
    fault_proxy: FaultProxy, s3_client, bucket, adapters
) -> None:
    adapter = adapter_via(fault_proxy, bucket)
    adapters.append(adapter)
    adapter.write(make_entry("svc", "cfg", "base"))
    fault_proxy.add(method="PUT", path_contains=VERSION_OBJECT, drop_after_forward=True)

    written = adapter.write(make_entry("svc", "cfg", "expected two", version=2))

    assert (written.version, written.value) == (2, "expected two")
    assert stored_versions(s3_client, bucket, "svc", "cfg") == [1, 2]


def test_an_outcome_whose_responses_are_lost_is_recorded_once(
    fault_proxy: FaultProxy, s3_client, bucket, adapters
) -> None:
    adapter = adapter_via(fault_proxy, bucket)
    adapters.append(adapter)
    adapter.write(make_entry("svc", "fix", "restart it", confidence=0.6))
    outcome_put = fault_proxy.add(method="PUT", path_contains="/outcomes/",
                                  drop_after_forward=True)
    version_put = fault_proxy.add(method="PUT", path_contains=VERSION_OBJECT,
                                  drop_after_forward=True)
    record = OutcomeRecord(outcome_ref="INC-7", outcome_type=OutcomeType.SUCCESS,
                           committed_at=datetime.now(UTC), causal_entry_keys=["svc/fix"],
                           agent_id="agent-a")

    updated = adapter.commit_outcome(record)

    assert (outcome_put.fired, version_put.fired) == (1, 1)
    assert [(e.key, e.version, e.outcome_count) for e in updated] == [("fix", 2, 1)]
    assert stored_versions(s3_client, bucket, "svc", "fix") == [1, 2]
    assert all_keys(s3_client, bucket, "amfs/default/outcomes/") == [
        "amfs/default/outcomes/INC-7.json"
    ]


# ----------------------------------------------------------------------
# a mixed fault schedule with concurrent writers
# ----------------------------------------------------------------------


def mixed_schedule(proxy: FaultProxy) -> list[Rule]:
    """Faults interleaved with clean passes so no single request can exhaust the
    retry budget, yet every kind of fault lands on some writer's request."""
    faults: list[tuple[str, str, dict[str, Any]]] = [
        ("PUT", VERSION_OBJECT, {"status": 503}),
        ("PUT", VERSION_OBJECT, {"drop_after_forward": True}),
        ("PUT", VERSION_OBJECT, {"status": 500}),
        ("PUT", VERSION_OBJECT, {"reset": True}),
        ("PUT", VERSION_OBJECT, {"drop_after_forward": True}),
        ("PUT", VERSION_OBJECT, {"stall": 0.3}),
        ("PUT", VERSION_OBJECT, {"drop_after_forward": True}),
        ("GET", LISTING, {"status": 503}),
        ("GET", LISTING, {"reset": True}),
        ("GET", LISTING, {"status": 500}),
        ("PUT", JOURNAL_OBJECT, {"status": 500}),
        ("PUT", JOURNAL_OBJECT, {"drop_after_forward": True}),
        ("PUT", JOURNAL_OBJECT, {"reset": True}),
    ]
    rules: list[Rule] = []
    for method, path, action in faults:
        rules.append(proxy.add(method=method, path_contains=path, **action))
        proxy.add(method=method, path_contains=path)  # a clean pass in between
    return rules


def test_concurrent_writers_under_mixed_faults_keep_every_acknowledged_write_exactly_once(
    fault_proxy: FaultProxy, s3_client, bucket, adapters
) -> None:
    writers, updates = 4, 10
    for n in range(writers):
        adapter = adapter_via(fault_proxy, bucket, writer_id=f"writer-{n}", max_attempts=10)
        assert adapter.conditional_writes_supported
        adapters.append(adapter)
    faults = mixed_schedule(fault_proxy)
    start = threading.Barrier(writers)

    def run(n: int) -> list[MemoryEntry]:
        start.wait()
        return [adapters[n].write(make_entry("race", "hot", {"writer": n, "update": u}))
                for u in range(updates)]

    with ThreadPoolExecutor(writers) as pool:
        acknowledged = [e for batch in pool.map(run, range(writers)) for e in batch]

    assert all(rule.fired == 1 for rule in faults), [r for r in faults if r.fired != 1]
    total = writers * updates
    # Versions 1..N with N = acknowledged writes: none skipped, none duplicated.
    assert sorted(e.version for e in acknowledged) == list(range(1, total + 1))
    assert stored_versions(s3_client, bucket, "race", "hot") == list(range(1, total + 1))
    history = {e.version: e.value for e in adapters[0].history("race", "hot")}
    for entry in acknowledged:
        assert history[entry.version] == entry.value
    assert len({json.dumps(v, sort_keys=True) for v in history.values()}) == total
    # Each version has exactly one journal record, so watchers see it exactly once.
    journal = journal_records(s3_client, bucket)
    assert sorted(r["version"] for r in journal) == list(range(1, total + 1))


# ----------------------------------------------------------------------
# the watch poller through an outage
# ----------------------------------------------------------------------


class Inbox:
    """What a watch delivered, as (entity_path, key, version), in order."""

    def __init__(self) -> None:
        self.entries: queue.Queue[MemoryEntry] = queue.Queue()
        self.seen: list[tuple[str, str, int]] = []

    def __call__(self, entry: MemoryEntry) -> None:
        self.entries.put(entry)

    def until(self, entity_path: str, key: str, version: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (entity_path, key, version) not in self.seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{entity_path}/{key} v{version} never delivered; "
                                     f"got {self.seen}")
            try:
                entry = self.entries.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append((entry.entity_path, entry.key, entry.version))

    def changes(self) -> list[tuple[str, str, int]]:
        return [c for c in self.seen if c[0] != "warmup"]


def watch_is_live(writer: S3Adapter, inbox: Inbox) -> None:
    """Write until one write comes round: the watch baselines what exists when it
    starts, so only a write after that proves the poller is listening."""
    for attempt in range(1, 30):
        writer.write(make_entry("warmup", "ping", attempt))
        try:
            inbox.until("warmup", "ping", attempt, timeout=1.0)
            return
        except AssertionError:
            continue
    raise AssertionError("the watch never delivered a write")


@pytest.fixture
def watch_pair(
    fault_proxy: FaultProxy, s3_settings: S3Settings, adapters
) -> Callable[[float], tuple[S3Adapter, S3Adapter, Inbox]]:
    """A watcher behind the proxy and a writer straight to S3 (another pod)."""

    def make(resync_interval: float) -> tuple[S3Adapter, S3Adapter, Inbox]:
        watcher = adapter_via(fault_proxy, s3_settings.bucket, poll_interval=0.2,
                              resync_interval=resync_interval, max_attempts=2)
        writer = S3Adapter.from_settings(s3_settings)
        adapters.extend([watcher, writer])
        inbox = Inbox()
        watcher.watch("*", inbox)  # close() at teardown stops the watch
        watch_is_live(writer, inbox)
        return watcher, writer, inbox

    return make


def outage(proxy: FaultProxy, writer: S3Adapter, polls: int = 3) -> list[tuple[str, str, int]]:
    """Every request through the proxy fails while *writer* makes changes."""
    rule = proxy.add(status=503, times=-1)
    wait_until(lambda: rule.fired >= 1, 10, "the watcher to hit the outage")
    changes = [
        writer.write(make_entry("svc", "a", "a2")),
        writer.write(make_entry("svc", "b", "b1")),
        writer.write(make_entry("svc", "a", "a3")),
        writer.write(make_entry("svc/deep", "c", "c1")),
    ]
    seen = rule.fired
    wait_until(lambda: rule.fired >= seen + polls, 30, "more failed polls during the outage")
    proxy.clear()
    return [(e.entity_path, e.key, e.version) for e in changes]


def test_the_poller_recovers_after_an_outage_and_delivers_each_change_once(
    fault_proxy: FaultProxy, watch_pair
) -> None:
    _, writer, inbox = watch_pair(300.0)
    writer.write(make_entry("svc", "a", "a1"))
    inbox.until("svc", "a", 1, timeout=10)

    during = outage(fault_proxy, writer)
    marker = writer.write(make_entry("svc", "marker", "after the outage"))
    inbox.until("svc", "marker", marker.version, timeout=20)

    # The journal is in write order and the marker was written last, so
    # everything before it has been delivered by now.
    assert inbox.changes() == [("svc", "a", 1), *during, ("svc", "marker", 1)]


def test_a_resync_due_during_the_outage_does_not_swallow_intermediate_versions(
    fault_proxy: FaultProxy, watch_pair
) -> None:
    _, writer, inbox = watch_pair(0.5)
    writer.write(make_entry("svc", "a", "a1"))
    inbox.until("svc", "a", 1, timeout=10)

    during = outage(fault_proxy, writer)
    marker = writer.write(make_entry("svc", "marker", "after the outage"))
    inbox.until("svc", "marker", marker.version, timeout=20)

    assert sorted(inbox.changes()) == sorted([("svc", "a", 1), *during, ("svc", "marker", 1)])


def test_a_journal_record_that_fails_to_load_is_delivered_on_a_later_poll(
    fault_proxy: FaultProxy, watch_pair
) -> None:
    _, writer, inbox = watch_pair(300.0)
    # botocore's max_attempts counts retries: 2 means three attempts, all failing.
    rule = fault_proxy.add(method="GET", path_contains=JOURNAL_OBJECT, status=500, times=3)
    lost = writer.write(make_entry("svc", "a", "fetched late"))
    wait_until(lambda: rule.fired == 3, 10, "the journal GET to fail")
    marker = writer.write(make_entry("svc", "marker", "after"))
    inbox.until("svc", "marker", marker.version, timeout=10)

    assert ("svc", "a", lost.version) in inbox.changes()
