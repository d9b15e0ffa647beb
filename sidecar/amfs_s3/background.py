"""One daemon thread that runs submitted jobs in submission order.

The adapter hands it journal records: a write is acknowledged once its version
object is stored (that PUT is the durable write), and the record that tells
other processes about it follows off the caller's critical path, in order.
``drain`` waits for what was submitted; at interpreter exit every live queue is
drained for a bounded time, so a short script's last records still go out.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable

logger = logging.getLogger(__name__)

EXIT_DRAIN_SECONDS = 10.0

_live: weakref.WeakSet[BackgroundQueue] = weakref.WeakSet()


class BackgroundQueue:
    """FIFO jobs on one lazily started daemon thread; a failing job is logged,
    never fatal to the thread (the job itself decides about retries)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: deque[Callable[[], None]] = deque()
        self._unfinished = 0
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        _live.add(self)

    @property
    def unfinished(self) -> int:
        """Jobs submitted and not yet finished (the one running included)."""
        return self._unfinished

    def submit(self, job: Callable[[], None]) -> None:
        with self._changed:
            self._jobs.append(job)
            self._unfinished += 1
            self._closing = False
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._jobs and not self._closing:
                    self._changed.wait()
                if not self._jobs:
                    self._thread = None
                    return
                job = self._jobs.popleft()
            try:
                job()
            except Exception:  # the thread outlives any one job
                logger.exception("background job on %s failed", self.name)
            finally:
                with self._changed:
                    self._unfinished -= 1
                    self._changed.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every job submitted so far has finished; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self._unfinished:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Drain, then let the thread end (a later ``submit`` starts a new one)."""
        drained = self.drain(timeout)
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        return drained


@atexit.register
def _drain_at_exit() -> None:
    for queue in list(_live):
        if not queue.drain(EXIT_DRAIN_SECONDS):
            logger.warning("%s: %d background job(s) not finished at exit",
                           queue.name, queue.unfinished)
