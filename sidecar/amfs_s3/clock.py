"""The storage's clock, as this process estimates it from S3 responses' ``Date`` header.

Journal keys start with a time, and pollers list the journal from a time. Stamped
with each writer's own clock, one writer running fast would move every poller's
cursor past everybody else's records, and one running slow would write records
behind every cursor. Stamped with the storage's clock (one clock for all), both
vanish; what remains is the estimate's error, well inside the pollers' look-back.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from email.utils import parsedate_to_datetime

# Enough samples for the median to shrug off a few slow responses, few enough to
# follow a clock that is corrected while the process runs.
SAMPLES = 31
# HTTP dates are truncated to the second: the true time lies in [date, date + 1).
_HALF_SECOND = 0.5
# Below this the Date header cannot tell a wrong clock from its own rounding, and
# an NTP-synced clock is better than any estimate from it: trust the local clock.
TRUST_LOCAL_WITHIN_SECONDS = 2.0


def parse_http_date(value: str | None) -> float | None:
    """Seconds since the epoch of an HTTP ``Date`` header, None if absent or unreadable."""
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp()


class StorageClock:
    """Local time corrected by the median offset of the storage's ``Date`` headers,
    when that offset is larger than the headers' resolution can explain.

    Thread-safe; before the first observation it is the local clock. ``now_ms``
    never goes backwards, however the estimate moves: one writer's journal keys
    then sort in the order it wrote them.
    """

    def __init__(self, local: Callable[[], float] = time.time) -> None:
        self._local = local
        self._offsets: deque[float] = deque(maxlen=SAMPLES)
        self._offset = 0.0
        self._last_ms = 0
        self._lock = threading.Lock()

    @property
    def offset_seconds(self) -> float:
        """Storage time minus local time, as estimated so far."""
        return self._offset

    @property
    def observed(self) -> bool:
        return bool(self._offsets)

    def observe(self, date_header: str | None, received_at: float | None = None) -> None:
        """Fold in one response's ``Date``, received at local time *received_at*."""
        storage_time = parse_http_date(date_header)
        if storage_time is None:
            return
        local = self._local() if received_at is None else received_at
        with self._lock:
            self._offsets.append(storage_time + _HALF_SECOND - local)
            median = statistics.median(self._offsets)
            self._offset = median if abs(median) > TRUST_LOCAL_WITHIN_SECONDS else 0.0

    def now(self) -> float:
        """The storage's time now, in seconds since the epoch."""
        return self._local() + self._offset

    def now_ms(self) -> int:
        with self._lock:
            self._last_ms = max(self._last_ms, int(self.now() * 1000))
            return self._last_ms
