"""What each adapter operation costs in S3 requests, and which of them the caller waits for.

Requests are told apart by the thread that sends them: the caller's thread is
the critical path; journal records go out on the adapter's background thread.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from amfs_core.models import OutcomeRecord, OutcomeType

from amfs_s3 import S3Adapter, small_puts
from amfs_s3 import probe as probe_cache
from amfs_s3.config import S3Settings
from tests.fixtures.s3 import all_keys
from tests.fixtures.s3_proxy import FaultProxy
from tests.integration.test_adapter import make_entry


class ThreadedLog:
    """Every S3 attempt as (operation, outcome, thread that sent it)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, operation: str, outcome: str) -> None:
        with self._lock:
            self.seen.append((operation, outcome, threading.current_thread().name))

    def take(self) -> list[tuple[str, str, str]]:
        with self._lock:
            taken, self.seen = self.seen, []
        return taken


def on(thread: threading.Thread, seen: list[tuple[str, str, str]]) -> Counter[str]:
    return Counter(op for op, _, name in seen if name == thread.name)


def total(seen: list[tuple[str, str, str]]) -> Counter[str]:
    return Counter(op for op, _, _ in seen)


@pytest.fixture
def log() -> ThreadedLog:
    return ThreadedLog()


@pytest.fixture
def adapter(s3_settings: S3Settings, log: ThreadedLog, adapters: list[S3Adapter]) -> S3Adapter:
    made = S3Adapter.from_settings(s3_settings, request_observer=log)
    adapters.append(made)
    assert made.conditional_writes_supported
    assert made.drain_journal(30)
    log.take()
    return made


def settled(adapter: S3Adapter, log: ThreadedLog) -> list[tuple[str, str, str]]:
    assert adapter.drain_journal(30)
    return log.take()


def test_a_new_key_is_one_put_on_the_callers_path_and_no_list(adapter, log) -> None:
    written = adapter.write(make_entry("svc", "fresh", 1))
    seen = settled(adapter, log)
    assert written.version == 1
    assert on(threading.current_thread(), seen) == {"PutObject": 1}
    # The journal record follows on the background thread: 2 PUTs in all, no LIST.
    assert total(seen) == {"PutObject": 2}


def test_an_update_of_a_known_key_is_one_put_without_a_list(adapter, log) -> None:
    adapter.write(make_entry("svc", "hot", "first"))
    settled(adapter, log)
    written = adapter.write(make_entry("svc", "hot", "second"))
    seen = settled(adapter, log)
    assert written.version == 2
    assert on(threading.current_thread(), seen) == {"PutObject": 1}
    assert total(seen) == {"PutObject": 2}


def test_an_update_with_a_stale_guess_costs_a_412_and_a_list_and_keeps_both(
    s3_settings, log, adapters
) -> None:
    a = S3Adapter.from_settings(s3_settings, request_observer=log)
    b = S3Adapter.from_settings(s3_settings)
    adapters.extend([a, b])
    a.write(make_entry("svc", "shared", "a1"))
    b.write(make_entry("svc", "shared", "b2"))  # b never saw v1: PUT v1 412, LIST, PUT v2
    settled(a, log)
    written = a.write(make_entry("svc", "shared", "a3"))  # a believes v1 is current
    seen = settled(a, log)
    assert written.version == 3
    assert [(op, outcome) for op, outcome, _ in seen if op != "PutObject" or
            outcome != "success"] == [("PutObject", "conflict"), ("ListObjectsV2", "success")]
    assert [e.value for e in a.history("svc", "shared")] == ["a1", "b2", "a3"]


def test_two_adapters_racing_with_stale_caches_keep_every_update(s3_settings, adapters) -> None:
    writers = [S3Adapter.from_settings(s3_settings, writer_id=f"w{n}") for n in range(2)]
    adapters.extend(writers)
    updates = 15
    start = threading.Barrier(len(writers))

    def run(n: int) -> None:
        start.wait()
        for u in range(updates):
            writers[n].write(make_entry("race", "hot", {"writer": n, "update": u}))

    with ThreadPoolExecutor(len(writers)) as pool:
        list(pool.map(run, range(len(writers))))

    history = writers[0].history("race", "hot")
    assert [e.version for e in history] == list(range(1, 2 * updates + 1))
    kept = {(e.value["writer"], e.value["update"]) for e in history}
    assert kept == {(n, u) for n in range(2) for u in range(updates)}


def test_a_stated_version_is_checked_from_the_cache_without_a_list(adapter, log) -> None:
    adapter.write(make_entry("svc", "cas", "v1"))
    settled(adapter, log)
    assert adapter.write(make_entry("svc", "cas", "v2", version=2)).version == 2
    assert on(threading.current_thread(), settled(adapter, log)) == {"PutObject": 1}


def test_a_read_is_one_list_and_one_get_then_one_list(s3_settings, log, adapters) -> None:
    writer = S3Adapter.from_settings(s3_settings)
    reader = S3Adapter.from_settings(s3_settings, request_observer=log)
    adapters.extend([writer, reader])
    writer.write(make_entry("svc", "cfg", "value"))
    for _ in range(2):
        entry = reader.read("svc", "cfg")
        assert entry is not None and entry.value == "value"
    # Versions never change: the second read LISTs (is v1 still current?) and
    # takes v1's bytes from what the first read fetched.
    assert [op for op, _, _ in log.take()] == ["ListObjectsV2", "GetObject", "ListObjectsV2"]


def test_a_read_of_a_key_this_adapter_wrote_is_one_list(adapter, log) -> None:
    adapter.write(make_entry("svc", "mine", "value"))
    settled(adapter, log)
    entry = adapter.read("svc", "mine")
    assert entry is not None and entry.value == "value"
    assert total(settled(adapter, log)) == {"ListObjectsV2": 1}


def test_without_the_body_cache_a_known_version_is_fetched_beside_the_list(
    s3_settings, log, adapters
) -> None:
    adapter = S3Adapter.from_settings(s3_settings, request_observer=log, body_cache_bytes=0)
    adapters.append(adapter)
    adapter.write(make_entry("svc", "cfg", "value"))
    settled(adapter, log)
    entry = adapter.read("svc", "cfg")
    assert entry is not None and entry.value == "value"
    seen = settled(adapter, log)
    assert total(seen) == {"ListObjectsV2": 1, "GetObject": 1}
    # The GET went out on the pool, not after the LIST on the caller's thread.
    assert on(threading.current_thread(), seen) == {"ListObjectsV2": 1}


def test_a_read_after_another_writer_moved_on_returns_the_newest(s3_settings, adapters) -> None:
    a = S3Adapter.from_settings(s3_settings)
    b = S3Adapter.from_settings(s3_settings)
    adapters.extend([a, b])
    a.write(make_entry("svc", "cfg", "old"))
    b.write(make_entry("svc", "cfg", "new"))
    entry = a.read("svc", "cfg")  # a's speculative GET of v1 is not the answer
    assert entry is not None and (entry.version, entry.value) == (2, "new")


def test_commit_outcome_on_a_known_entry_lists_nothing(adapter, log) -> None:
    adapter.write(make_entry("outcomes", "cited", "restart the worker"))
    settled(adapter, log)
    updated = adapter.commit_outcome(OutcomeRecord(
        outcome_ref="INC-1", outcome_type=OutcomeType.SUCCESS, committed_at=datetime.now(UTC),
        causal_entry_keys=["outcomes/cited"], agent_id="a"))
    seen = settled(adapter, log)
    assert [e.version for e in updated] == [2]
    # The record and the new version (built on the version this adapter wrote,
    # its bytes held); 2 journal records. No LIST, no GET.
    assert total(seen) == {"PutObject": 4}


# ----------------------------------------------------------------------
# the conditional-write probe
# ----------------------------------------------------------------------


def test_the_probe_runs_once_per_endpoint_and_bucket_in_a_process(s3_settings, adapters) -> None:
    first_log, second_log = ThreadedLog(), ThreadedLog()
    first = S3Adapter.from_settings(s3_settings, request_observer=first_log)
    second = S3Adapter.from_settings(s3_settings, request_observer=second_log)
    adapters.extend([first, second])
    assert first.conditional_writes_supported and second.conditional_writes_supported
    assert total(first_log.take()) == {"PutObject": 2, "DeleteObject": 1}
    assert second_log.take() == []


def test_concurrent_first_uses_share_one_probe(s3_settings, adapters) -> None:
    log = ThreadedLog()
    many = [S3Adapter.from_settings(s3_settings, request_observer=log) for _ in range(6)]
    adapters.extend(many)
    with ThreadPoolExecutor(len(many)) as pool:
        answers = list(pool.map(lambda a: a.conditional_writes_supported, many))
    assert answers == [True] * len(many)
    assert total(log.take()) == {"PutObject": 2, "DeleteObject": 1}


def adapter_via(proxy: FaultProxy, bucket: str, **kwargs: Any) -> S3Adapter:
    return S3Adapter(bucket, endpoint_url=proxy.url, aws_access_key_id="testing",
                     aws_secret_access_key="testing", **kwargs)


def test_the_probe_needs_no_delete_permission_and_leaves_one_documented_object(
    fault_proxy: FaultProxy, s3_client, bucket, adapters
) -> None:
    denied = fault_proxy.add(method="DELETE", status=403, times=-1)
    log = ThreadedLog()
    adapter = adapter_via(fault_proxy, bucket, request_observer=log)
    adapters.append(adapter)

    assert adapter.conditional_writes_supported is True
    assert denied.fired == 1
    assert all_keys(s3_client, bucket, "amfs/") == [
        "amfs/default/_probe/conditional-write.json"]

    # Another process (here: the cache forgotten) finds the object: one PUT, 412.
    probe_cache.forget(fault_proxy.url, bucket)
    again = adapter_via(fault_proxy, bucket, request_observer=log)
    adapters.append(again)
    log.take()
    assert again.conditional_writes_supported is True
    assert [(op, outcome) for op, outcome, _ in log.take()] == [("PutObject", "conflict")]
    assert denied.fired == 1
    assert all_keys(s3_client, bucket, "amfs/") == [
        "amfs/default/_probe/conditional-write.json"]


def test_an_entry_put_goes_out_whole_and_only_a_large_one_waits_for_100_continue(
    fault_proxy: FaultProxy, bucket, adapters
) -> None:
    """botocore asks every PUT to wait for ``100 Continue``: for a few KB of JSON that
    is an exchange more per write (and moto answered a refused one 10 ms late)."""
    adapter = adapter_via(fault_proxy, bucket)
    adapters.append(adapter)
    adapter.write(make_entry("svc", "small", {"text": "x" * 1000}))
    adapter.write(make_entry("svc", "small", "updated"))  # v1's 412 path too: new guess
    adapter.known.clear()
    adapter.write(make_entry("svc", "small", "from a stranger"))  # 412 on v1, LIST, PUT v3
    large = "y" * small_puts.EXPECT_CONTINUE_FROM_BYTES
    adapter.write(make_entry("svc", "large", large))
    assert adapter.drain_journal(30)

    puts = [(path, expect) for (method, path), expect
            in zip(fault_proxy.requests, fault_proxy.expects, strict=True) if method == "PUT"]
    entry_puts = [(path, expect) for path, expect in puts if "/entries/" in path]
    assert [expect for path, expect in entry_puts if "/small/" in path] == ["", "", "", ""]
    assert [expect for path, expect in entry_puts if "/large/" in path] == ["100-continue"]
    assert all(expect == "" for path, expect in puts if "/journal/" in path)
    assert adapter.read("svc", "large").value == large
    assert adapter.read("svc", "small").version == 3


def test_listed_timestamps_are_parsed_by_the_standard_library(adapter, bucket) -> None:
    """dateutil took a third of a cold read's CPU; the adapter's client uses
    datetime.fromisoformat for S3's ISO 8601 (an aware UTC datetime, not dateutil's tzutc)."""
    adapter.write(make_entry("svc", "when", 1))
    entries = "amfs/default/entries/"
    listed = adapter.client.list_objects_v2(Bucket=bucket, Prefix=entries)["Contents"]
    assert listed and all(obj["LastModified"].tzinfo is UTC for obj in listed)
    plain = boto3.client("s3", endpoint_url=adapter.settings.endpoint_url,
                         region_name="us-east-1")  # a default session's client: untouched
    other = plain.list_objects_v2(Bucket=bucket, Prefix=entries)["Contents"]
    assert [o["LastModified"].timestamp() for o in other] == [
        o["LastModified"].timestamp() for o in listed]
    assert all(o["LastModified"].tzinfo is not UTC for o in other)


def test_a_provider_ignoring_the_condition_is_found_even_when_delete_is_denied(
    fault_proxy: FaultProxy, s3_client, bucket, adapters
) -> None:
    fault_proxy.add(method="DELETE", status=403, times=-1)
    fault_proxy.add(method="PUT", strip_if_none_match=True, times=-1)
    adapter = adapter_via(fault_proxy, bucket)
    adapters.append(adapter)
    assert adapter.conditional_writes_supported is False
    assert all_keys(s3_client, bucket, "amfs/") == [
        "amfs/default/_probe/conditional-write.json"]
