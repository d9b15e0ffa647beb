"""At most one log line per kind of noisy event per interval.

Out of descriptors, asyncio logged a traceback for every failed accept() (473 MB
in two minutes); aiohttp logs one for every malformed request. Both are caused
by clients, so both are capped here: the first record of a kind passes, the rest
of the interval are counted, and the next one to pass carries ``suppressed=N``.
Client errors and accept failures lose their traceback (one line: the error);
anything else keeps it, since it is a bug worth reading.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp.http_exceptions import HttpProcessingError

DEFAULT_INTERVAL_SECONDS = 60.0
# Loggers whose records are caused by clients, not by the sidecar.
NOISY_LOGGERS = ("asyncio", "aiohttp.server", "amfs_sidecar.connections")
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass
class _Window:
    until: float
    suppressed: int = 0


def kind(record: logging.LogRecord) -> tuple[str, str]:
    """Records of one kind: same logger, same message template (its first line), same
    exception type.

    asyncio formats the context (the socket's repr) into the message below the
    first line, and aiohttp passes the client address as an argument, so neither
    splits one kind into many; two different bugs behind aiohttp's one message
    ("Error handling request") stay two kinds.
    """
    exc = record.exc_info[1] if record.exc_info else None
    message = str(record.msg).split("\n", 1)[0]
    return record.name, message if exc is None else f"{message} ({type(exc).__name__})"


def _is_client_error(exc: BaseException | None) -> bool:
    if isinstance(exc, HttpProcessingError | ConnectionError):
        return True
    return isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS


def shorten(record: logging.LogRecord) -> None:
    """A client error's traceback becomes one ``error=`` field, at WARNING at most."""
    exc = record.exc_info[1] if record.exc_info else None
    if not _is_client_error(exc):
        return
    record.exc_info, record.exc_text = None, None
    record.error = f"{type(exc).__name__}: {exc}"
    if record.levelno > logging.WARNING:
        record.levelno, record.levelname = logging.WARNING, "WARNING"


class RateLimitFilter(logging.Filter):
    """Lets one record of each :func:`kind` through per *interval* seconds."""

    def __init__(self, interval: float = DEFAULT_INTERVAL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self._clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key, now = kind(record), self._clock()
        window = self._windows.get(key)
        if window is not None and now < window.until:
            window.suppressed += 1
            return False
        self._windows[key] = _Window(until=now + self.interval)
        if window is not None and window.suppressed:
            record.suppressed = window.suppressed
        shorten(record)
        return True

    def pending(self) -> dict[tuple[str, str], int]:
        """Records suppressed and not yet reported, by kind."""
        return {key: w.suppressed for key, w in self._windows.items() if w.suppressed}

    def flush(self, log: logging.Logger) -> None:
        """Report what is still suppressed (at stop: no later record would carry it)."""
        for (name, message), count in self.pending().items():
            log.warning("suppressed similar log records",
                        extra={"source_logger": name, "source_event": message,
                               "suppressed": count})
        self._windows.clear()


_FILTER = RateLimitFilter()


def install(interval: float | None = None) -> RateLimitFilter:
    """Attach the process's one filter to :data:`NOISY_LOGGERS` (idempotent)."""
    if interval is not None:
        _FILTER.interval = interval
    for name in NOISY_LOGGERS:
        logging.getLogger(name).addFilter(_FILTER)
    return _FILTER
