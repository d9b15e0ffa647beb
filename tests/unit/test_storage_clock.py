"""The storage clock (amfs_s3.clock) and the journal cursor that follows it."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from amfs_s3.clock import (
    SAMPLES,
    TRUST_LOCAL_WITHIN_SECONDS,
    StorageClock,
    parse_http_date,
)
from amfs_s3.journal import FUTURE_TOLERANCE_MS, JournalCursor
from amfs_s3.layout import Layout

LAYOUT = Layout("amfs/", "default")
NOW = 1_800_000_000.0


def http_date(seconds: float) -> str:
    return formatdate(seconds, usegmt=True)


def test_http_dates_parse_and_junk_is_ignored() -> None:
    assert parse_http_date(http_date(NOW)) == int(NOW)
    for junk in (None, "", "yesterday", "Mon, 99 Foo 2026 99:99:99 GMT"):
        assert parse_http_date(junk) is None


@pytest.mark.parametrize("skew", [-120.0, 0.0, 120.0, 3600.0])
def test_the_clock_recovers_the_storage_time_whatever_the_local_skew(skew: float) -> None:
    # The local clock is *skew* seconds ahead of the storage's.
    local = [NOW + skew]
    clock = StorageClock(local=lambda: local[0])
    assert not clock.observed and clock.now() == NOW + skew  # before any response: local
    for step in range(10):
        storage = NOW + step * 0.37
        local[0] = storage + skew
        clock.observe(http_date(storage))
    if skew == 0.0:
        # A clock the headers cannot fault is trusted as it is.
        assert clock.offset_seconds == 0.0
        return
    # Date headers are truncated to the second: the estimate is within half a second.
    assert abs(clock.now() - (NOW + 9 * 0.37)) <= 0.5 + 1e-6
    assert abs(clock.offset_seconds + skew) <= 0.5 + 1e-6


def test_one_slow_response_does_not_move_the_median() -> None:
    clock = StorageClock(local=lambda: NOW)
    for _ in range(5):
        clock.observe(http_date(NOW))
    clock.observe(http_date(NOW - 40))  # a response that sat in a queue
    assert clock.offset_seconds == 0.0


def keys(*stamps: tuple[int, str, int]) -> list[str]:
    return [LAYOUT.journal_key(ms, writer, seq) for ms, writer, seq in stamps]


def test_a_record_from_the_future_does_not_drag_the_cursor_past_others() -> None:
    now_ms = int(NOW * 1000)
    clock = [now_ms]
    cursor = JournalCursor.starting_now(LAYOUT, now_ms, lookback_ms=30_000,
                                        clock=lambda: clock[0])
    future, = keys((now_ms + 120_000, "fast-writer", 1))
    assert cursor.is_from_the_future(future)
    assert cursor.accept([future]) == [future]
    # The listing still starts from the storage's now minus the look-back ...
    assert cursor.start_after() == LAYOUT.journal_start_after(now_ms - 30_000)
    # ... so an honest writer's record written a moment later is still found,
    clock[0] = now_ms + 1_000
    honest, = keys((now_ms + 500, "honest", 1))
    assert not cursor.is_from_the_future(honest)
    assert cursor.accept([future, honest]) == [honest]
    # and the record from the future is never delivered twice while time catches up.
    for step in range(0, 200_000, 10_000):
        clock[0] = now_ms + step
        assert cursor.accept([future, honest]) == []


def test_records_inside_the_tolerance_are_not_reported() -> None:
    now_ms = int(NOW * 1000)
    cursor = JournalCursor.starting_now(LAYOUT, now_ms, clock=lambda: now_ms)
    near, far = keys((now_ms + FUTURE_TOLERANCE_MS, "w", 1),
                     (now_ms + FUTURE_TOLERANCE_MS + 1, "w", 2))
    assert not cursor.is_from_the_future(near)
    assert cursor.is_from_the_future(far)


def test_resuming_from_a_future_id_still_lists_from_now() -> None:
    now_ms = int(NOW * 1000)
    future, = keys((now_ms + 120_000, "fast-writer", 1))
    cursor = JournalCursor.resuming_after(LAYOUT, future, lookback_ms=30_000,
                                          clock=lambda: now_ms)
    assert cursor.start_after() == LAYOUT.journal_start_after(now_ms - 30_000)


def test_milliseconds_never_go_backwards_when_the_estimate_moves() -> None:
    local = [NOW]
    clock = StorageClock(local=lambda: local[0])
    clock.observe(http_date(NOW + 10))  # storage 10.5 s ahead
    ahead = clock.now_ms()
    for _ in range(SAMPLES):
        clock.observe(http_date(NOW))  # the estimate falls back by 10 s
    assert clock.offset_seconds == 0.0
    assert clock.now_ms() == ahead  # held, not rewound
    local[0] = NOW + 11
    assert clock.now_ms() == int((NOW + 11) * 1000)


def test_small_offsets_are_left_to_the_local_clock() -> None:
    clock = StorageClock(local=lambda: NOW)
    clock.observe(http_date(NOW + TRUST_LOCAL_WITHIN_SECONDS - 1))
    assert clock.offset_seconds == 0.0
    clock = StorageClock(local=lambda: NOW)
    clock.observe(http_date(NOW + TRUST_LOCAL_WITHIN_SECONDS + 1))
    assert clock.offset_seconds == TRUST_LOCAL_WITHIN_SECONDS + 1.5
