"""Noisy client-caused log records: one per kind per interval, one line each."""

from __future__ import annotations

import errno
import io
import logging
import sys
from collections.abc import Iterator

import pytest
from aiohttp.http_exceptions import BadStatusLine

from amfs_sidecar.lograte import RateLimitFilter, kind, shorten
from amfs_sidecar.logs import TextFormatter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, RateLimitFilter, Clock]]:
    clock = Clock()
    limiter = RateLimitFilter(interval=60.0, clock=clock)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    log = logging.getLogger("test.lograte")
    log.addHandler(handler)
    log.addFilter(limiter)
    log.propagate = False
    yield log, stream, limiter, clock
    log.removeHandler(handler)
    log.removeFilter(limiter)
    log.propagate = True


def exc_info(exc: BaseException) -> tuple:  # type: ignore[type-arg]
    try:
        raise exc
    except BaseException:
        return sys.exc_info()


def accept_error(log: logging.Logger, fd: int) -> None:
    # What asyncio's default exception handler logs: the context below the first line.
    log.error(f"socket.accept() out of system resource\nsocket: <socket fd={fd}>",
              exc_info=exc_info(OSError(errno.EMFILE, "Too many open files")))


def test_one_record_per_kind_per_interval_then_a_count(captured) -> None:  # type: ignore[no-untyped-def]
    log, stream, limiter, clock = captured
    for fd in range(500):
        accept_error(log, fd)
    log.error("Error handling request from %s", "10.0.0.1")
    log.error("Error handling request from %s", "10.0.0.2")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert limiter.pending() == {
        ("test.lograte", "socket.accept() out of system resource (OSError)"): 499,
        ("test.lograte", "Error handling request from %s"): 1,
    }
    clock.now += 60.0
    accept_error(log, 7)
    last = stream.getvalue().splitlines()[-1]
    assert "suppressed=499" in last and len(stream.getvalue().splitlines()) == 3


def test_client_errors_lose_their_traceback(captured) -> None:  # type: ignore[no-untyped-def]
    log, stream, _, _ = captured
    accept_error(log, 3)
    line = stream.getvalue()
    assert line.count("\n") == 1 and "Traceback" not in line and "exc=" not in line
    assert "WARNING" in line and "error=" in line and "Too many open files" in line


def test_a_bug_keeps_its_traceback() -> None:
    record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1,
                               "Error handling request from %s", ("x",),
                               exc_info(ZeroDivisionError("boom")))
    shorten(record)
    assert record.exc_info is not None and record.levelno == logging.ERROR


def test_a_malformed_request_is_one_warning_line() -> None:
    record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1,
                               "Error handling request from %s", ("x",),
                               exc_info(BadStatusLine("GARBAGE")))
    shorten(record)
    assert record.exc_info is None and record.levelname == "WARNING"
    assert record.error.startswith("BadStatusLine")  # type: ignore[attr-defined]


def test_kind_ignores_arguments_and_context_lines() -> None:
    a = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "first\nsocket: 1", (), None)
    b = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "first\nsocket: 2", (), None)
    assert kind(a) == kind(b) == ("asyncio", "first")


def test_flush_reports_what_no_later_record_carried(captured) -> None:  # type: ignore[no-untyped-def]
    log, _, limiter, _ = captured
    for fd in range(3):
        accept_error(log, fd)
    report = logging.getLogger("test.lograte.report")
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Keep()
    report.addHandler(handler)
    try:
        limiter.flush(report)
    finally:
        report.removeHandler(handler)
    assert [r.suppressed for r in seen] == [2]  # type: ignore[attr-defined]
    assert limiter.pending() == {}


def test_different_exceptions_behind_one_message_are_different_kinds() -> None:
    a = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "Error handling %s",
                          ("x",), exc_info(ZeroDivisionError("boom")))
    b = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "Error handling %s",
                          ("y",), exc_info(KeyError("k")))
    assert kind(a) != kind(b)
