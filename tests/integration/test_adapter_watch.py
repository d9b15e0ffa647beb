"""watch(): changes from other adapters (other pods) reach the callback by polling."""

from __future__ import annotations

import queue
import threading
import time

from amfs_core.models import MemoryEntry

from amfs_s3 import S3Adapter
from amfs_s3.config import S3Settings
from tests.fixtures.s3_proxy import FaultProxy
from tests.fixtures.sidecar import wait_until
from tests.integration.test_adapter import RequestLog, make_entry


def next_entry(inbox: queue.Queue[MemoryEntry], timeout: float) -> MemoryEntry:
    return inbox.get(timeout=timeout)


def test_a_write_from_another_adapter_arrives_within_poll_interval_plus_two_seconds(
    s3_settings: S3Settings,
) -> None:
    settings = s3_settings.model_copy(update={"poll_interval": 1.0, "resync_interval": 300.0})
    watcher, writer = S3Adapter.from_settings(settings), S3Adapter.from_settings(settings)
    inbox: queue.Queue[MemoryEntry] = queue.Queue()
    handle = watcher.watch("team", inbox.put)
    try:
        writer.write(make_entry("team/alpha", "plan", "ship it"))
        writer.write(make_entry("elsewhere", "plan", "ignored"))
        got = next_entry(inbox, timeout=settings.poll_interval + 2.0)
        assert (got.entity_path, got.key, got.value, got.version) == ("team/alpha", "plan",
                                                                        "ship it", 1)
        writer.write(make_entry("team/alpha", "plan", "ship it now"))
        again = next_entry(inbox, timeout=settings.poll_interval + 2.0)
        assert (again.version, again.value) == (2, "ship it now")
        assert inbox.empty()
    finally:
        handle.cancel()
        watcher.close()
        writer.close()


def test_a_write_landing_while_the_watch_takes_its_baseline_is_delivered(
    s3_settings: S3Settings, fault_proxy: FaultProxy,
) -> None:
    """The watch's first listing (what already exists: not to be delivered) is held
    back by the proxy until a write made after watch() returned has landed: that
    write must not count as 'already there'. CI lost it when the write won the race."""
    settings = s3_settings.model_copy(update={"poll_interval": 1.0, "resync_interval": 300.0})
    held = fault_proxy.add(method="GET", path_contains="list-type=2", stall=1.0)
    watcher = S3Adapter(settings.bucket, endpoint_url=fault_proxy.url,
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        poll_interval=1.0, resync_interval=300.0)
    writer = S3Adapter.from_settings(settings)
    inbox: queue.Queue[MemoryEntry] = queue.Queue()
    handle = watcher.watch("team", inbox.put)
    try:
        wait_until(lambda: held.fired == 1, message="the baseline listing reached the proxy")
        writer.write(make_entry("team/alpha", "plan", "while listing"))
        got = next_entry(inbox, timeout=held.stall + settings.poll_interval + 2.0)
        assert (got.entity_path, got.key, got.version) == ("team/alpha", "plan", 1)
        assert fault_proxy.requests[0][1].startswith(f"/{settings.bucket}?list-type=2")
    finally:
        handle.cancel()
        watcher.close()
        writer.close()


def test_own_writes_are_delivered_once(s3_settings: S3Settings) -> None:
    adapter = S3Adapter.from_settings(s3_settings)
    inbox: queue.Queue[MemoryEntry] = queue.Queue()
    handle = adapter.watch("svc", inbox.put)
    try:
        adapter.write(make_entry("svc", "k", 1))
        assert next_entry(inbox, timeout=2).value == 1
        # Give the poller several rounds to (wrongly) echo the write back.
        marker = make_entry("svc", "marker", "after")
        other = S3Adapter.from_settings(s3_settings)
        other.write(marker)
        assert next_entry(inbox, timeout=5).key == "marker"
        assert inbox.empty()
        other.close()
    finally:
        handle.cancel()
        adapter.close()


def test_full_resync_finds_writers_that_write_no_journal(
    s3_settings: S3Settings, s3_client, bucket
) -> None:
    settings = s3_settings.model_copy(update={"poll_interval": 0.2, "resync_interval": 1.0})
    adapter = S3Adapter.from_settings(settings)
    inbox: queue.Queue[MemoryEntry] = queue.Queue()
    handle = adapter.watch("*", inbox.put)
    try:
        deadline = time.monotonic() + 5
        while adapter._watch._baselined is False and time.monotonic() < deadline:
            time.sleep(0.05)
        foreign = MemoryEntry.model_validate(
            make_entry("legacy", "k", "no journal").model_dump(mode="json")
        )
        s3_client.put_object(
            Bucket=bucket,
            Key="amfs/default/entries/legacy/k/v1.json",
            Body=foreign.model_dump_json().encode(),
        )
        got = next_entry(inbox, timeout=settings.resync_interval + 3)
        assert (got.entity_path, got.key, got.value) == ("legacy", "k", "no journal")
    finally:
        handle.cancel()
        adapter.close()


def test_an_idle_adapter_makes_no_requests_and_cancel_stops_polling(
    s3_settings: S3Settings,
) -> None:
    log = RequestLog()
    adapter = S3Adapter.from_settings(s3_settings, request_observer=log)
    assert adapter.watching is False
    first = adapter.watch("svc", lambda entry: None)
    second = adapter.watch("svc", lambda entry: None)
    assert adapter.watching is True
    first.cancel()
    assert adapter.watching is True
    second.cancel()
    assert adapter.watching is False
    log.reset()
    # Absence cannot be awaited: observe several poll intervals of silence.
    time.sleep(s3_settings.poll_interval * 5)
    assert sum(log.calls.values()) == 0
    adapter.close()


def test_one_poll_is_one_listing_whatever_the_number_of_entries(s3_settings: S3Settings) -> None:
    from amfs_s3.journal import JournalCursor

    writer = S3Adapter.from_settings(s3_settings)
    for n in range(40):
        writer.write(make_entry("many", f"k{n}", n))
    log = RequestLog()
    poller = S3Adapter.from_settings(s3_settings, request_observer=log)
    cursor = JournalCursor.starting_now(poller.layout, int(time.time() * 1000))
    poller.poll_journal(cursor)  # the look-back window returns the 40 recent records
    log.reset()
    assert poller.poll_journal(cursor) == []
    assert log.count("ListObjectsV2") == 1
    assert sum(log.calls.values()) == 1
    writer.close()
    poller.close()


def test_callbacks_that_raise_do_not_stop_the_watch(s3_settings: S3Settings) -> None:
    adapter = S3Adapter.from_settings(s3_settings)
    other = S3Adapter.from_settings(s3_settings)
    seen = threading.Event()
    calls: list[str] = []

    def flaky(entry: MemoryEntry) -> None:
        calls.append(entry.key)
        if len(calls) == 1:
            raise RuntimeError("boom")
        seen.set()

    handle = adapter.watch("svc", flaky)
    try:
        other.write(make_entry("svc", "one", 1))
        other.write(make_entry("svc", "two", 2))
        assert seen.wait(5)
        assert calls == ["one", "two"]
    finally:
        handle.cancel()
        adapter.close()
        other.close()


