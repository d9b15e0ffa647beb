"""The adapter's bounded memory of current versions, and the ordered background queue."""

from __future__ import annotations

import threading

import pytest

from amfs_s3.background import BackgroundQueue
from amfs_s3.known import KnownVersions, VersionBodies


def test_remembers_the_highest_version_seen() -> None:
    known = KnownVersions(10)
    known.note("svc", "k", 3)
    known.note("svc", "k", 2)  # an older version seen later does not move it back
    assert known.get("svc", "k") == 3
    assert known.get("svc", "other") is None


def test_is_bounded_and_evicts_the_least_recently_used() -> None:
    known = KnownVersions(3)
    for n in range(3):
        known.note("svc", f"k{n}", 1)
    assert known.get("svc", "k0") == 1  # touched: k1 is now the oldest
    known.note("svc", "k3", 1)
    assert len(known) == 3
    assert known.get("svc", "k1") is None
    assert [known.get("svc", k) for k in ("k0", "k2", "k3")] == [1, 1, 1]


def test_forget_drops_a_guess_that_proved_stale() -> None:
    known = KnownVersions(3)
    known.note("svc", "k", 4)
    known.forget("svc", "k")
    assert known.get("svc", "k") is None
    known.forget("svc", "never-seen")  # harmless


def test_zero_turns_it_off_and_negative_is_refused() -> None:
    off = KnownVersions(0)
    off.note("svc", "k", 1)
    assert off.get("svc", "k") is None and len(off) == 0
    with pytest.raises(ValueError, match="max_keys"):
        KnownVersions(-1)


def test_the_background_queue_runs_jobs_in_submission_order() -> None:
    queue = BackgroundQueue("test-queue")
    done: list[int] = []
    release = threading.Event()
    queue.submit(release.wait)  # holds the thread until every job is queued
    for n in range(50):
        queue.submit(lambda n=n: done.append(n))
    assert queue.unfinished == 51
    release.set()
    assert queue.drain(10)
    assert done == list(range(50)) and queue.unfinished == 0


def test_a_failing_job_does_not_stop_the_ones_after_it() -> None:
    queue = BackgroundQueue("test-queue")
    done: list[str] = []

    def fail() -> None:
        raise RuntimeError("boom")

    queue.submit(fail)
    queue.submit(lambda: done.append("after"))
    assert queue.drain(10)
    assert done == ["after"]


def test_drain_reports_a_timeout_and_close_lets_a_later_submit_run() -> None:
    queue = BackgroundQueue("test-queue")
    release = threading.Event()
    queue.submit(release.wait)
    assert queue.drain(0.05) is False
    release.set()
    assert queue.close(10)
    done: list[int] = []
    queue.submit(lambda: done.append(1))
    assert queue.drain(10) and done == [1]


def test_version_bodies_are_bounded_in_bytes_and_evict_the_oldest() -> None:
    bodies = VersionBodies(800)
    for v in range(1, 5):
        bodies.put("svc", "k", v, bytes(100))
    assert bodies.get("svc", "k", 1) is not None  # touched: v2 is now the oldest
    for v in range(5, 10):
        bodies.put("svc", "k", v, bytes(100))
    assert bodies.size <= 800 and len(bodies) == 8
    assert bodies.get("svc", "k", 2) is None and bodies.get("svc", "k", 1) is not None


def test_a_body_over_an_eighth_of_the_cache_is_not_kept_and_zero_is_off() -> None:
    bodies = VersionBodies(800)
    bodies.put("svc", "k", 1, bytes(101))
    assert bodies.get("svc", "k", 1) is None and bodies.size == 0
    off = VersionBodies(0)
    off.put("svc", "k", 1, b"{}")
    assert off.get("svc", "k", 1) is None
    with pytest.raises(ValueError, match="max_bytes"):
        VersionBodies(-1)
