"""What this process knows of the bucket, bounded: the current version of each
key it has seen, and the bytes of versions it has read or written.

A write of a key the adapter has seen goes straight to ``v{n+1}`` instead of
listing first. A stale guess costs nothing in safety: versions are written with
``If-None-Match: *`` and never deleted, so a guess that is too low meets an
existing object (412) and the writer re-lists. The cache is only a hint.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

DEFAULT_MAX_KEYS = 10_000


class KnownVersions:
    """An LRU map (entity_path, key) -> highest version seen, thread-safe."""

    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if max_keys < 0:
            raise ValueError(f"max_keys is {max_keys}; it must be >= 0 (0 turns the cache off)")
        self.max_keys = max_keys
        self._versions: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._versions)

    def get(self, entity_path: str, key: str) -> int | None:
        with self._lock:
            version = self._versions.get((entity_path, key))
            if version is not None:
                self._versions.move_to_end((entity_path, key))
            return version

    def note(self, entity_path: str, key: str, version: int) -> None:
        """Remember *version* as seen; a lower one than already known is ignored,
        since versions only grow."""
        if self.max_keys == 0 or version < 1:
            return
        name = (entity_path, key)
        with self._lock:
            if self._versions.get(name, 0) < version:
                self._versions[name] = version
            self._versions.move_to_end(name)
            while len(self._versions) > self.max_keys:
                self._versions.popitem(last=False)

    def forget(self, entity_path: str, key: str) -> None:
        """Drop the guess after it proved stale (a 412), so the next write lists."""
        with self._lock:
            self._versions.pop((entity_path, key), None)

    def clear(self) -> None:
        with self._lock:
            self._versions.clear()


DEFAULT_BODY_CACHE_BYTES = 8 * 1024 * 1024


class VersionBodies:
    """An LRU of stored version objects' bytes, bounded in bytes, thread-safe.

    A version object never changes once written (no overwrite, no delete), so
    its bytes are valid for as long as they are kept: a read still LISTs to learn
    which version is current, and only the GET of a version held here is saved.
    """

    def __init__(self, max_bytes: int = DEFAULT_BODY_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes is {max_bytes}; it must be >= 0 (0 turns the cache off)")
        self.max_bytes = max_bytes
        self.size = 0
        self._bodies: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._bodies)

    def get(self, entity_path: str, key: str, version: int) -> bytes | None:
        with self._lock:
            body = self._bodies.get((entity_path, key, version))
            if body is not None:
                self._bodies.move_to_end((entity_path, key, version))
            return body

    def put(self, entity_path: str, key: str, version: int, body: bytes) -> None:
        # One body may take at most an eighth, so a few huge values cannot flush the rest.
        if len(body) > self.max_bytes // 8:
            return
        name = (entity_path, key, version)
        with self._lock:
            old = self._bodies.pop(name, None)
            if old is not None:
                self.size -= len(old)
            self._bodies[name] = body
            self.size += len(body)
            while self.size > self.max_bytes:
                _, evicted = self._bodies.popitem(last=False)
                self.size -= len(evicted)

    def clear(self) -> None:
        with self._lock:
            self._bodies.clear()
            self.size = 0
