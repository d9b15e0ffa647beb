"""One lock per memory, so that everything reconciling a memory takes turns.

kopf runs a memory's change handlers, its re-probe timer and the Secret watch
independently, in a pool of threads. Two of them reconciling the same memory at
once would both start from the same stored status, both announce the same
transitions as Events, and the later status write could roll the earlier one back.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class MemoryLocks:
    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    @contextmanager
    def hold(self, namespace: str, name: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault((namespace, name), threading.Lock())
        with lock:
            yield

    def forget(self, namespace: str, name: str) -> None:
        """The memory is gone: drop its lock (a later one of that name gets a new one)."""
        with self._guard:
            self._locks.pop((namespace, name), None)

    def __len__(self) -> int:
        with self._guard:
            return len(self._locks)
