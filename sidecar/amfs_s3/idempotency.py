"""Idempotency keys for writes: a retry with the same key returns the first
write's result instead of making a new version.

The failure this is for: the version PUT reached S3 and its answer did not, so
the caller saw an error and retries. A key kept only in memory would not
survive that across sidecars or a restart, so the key travels with the version
it made, as S3 user metadata on the version object (``amfs-idempotency-key`` and
``amfs-request-digest``, a digest of what was asked). A write with a key looks,
before it writes, in a bounded cache of this process's recent keyed writes and
then at the key's newest versions (one LIST, a HEAD per version, newest first).

The window: a retry is recognised while the first write is among the entry's
``CHECKED_VERSIONS`` newest versions and less than ``WINDOW_SECONDS`` old (and,
from the cache alone, on the same process for as long as it is cached). A key
is scoped to one (entity_path, key): the same key on another entry is another
write. The same key with a different request is refused
(:class:`IdempotencyKeyReusedError`, HTTP 409).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from amfs_core.models import MemoryEntry
from botocore.exceptions import ClientError

from amfs_s3.exceptions import IdempotencyKeyReusedError, InvalidNameError, S3AccessError
from amfs_s3.journal import Change
from amfs_s3.layout import Layout


class S3Adapter(Protocol):
    """What this module needs of :class:`amfs_s3.adapter.S3Adapter`; a Protocol
    rather than an import, because the adapter imports this module."""

    layout: Layout

    def write_with_change(
        self, entry: MemoryEntry, *, known_version: int | None = None,
        wait_for_journal: bool = False, metadata: dict[str, str] | None = None,
    ) -> tuple[MemoryEntry, Change]: ...

    def read_at_version(self, entity_path: str, key: str, version: int
                        ) -> MemoryEntry | None: ...

    def _journal_write(self, entry: MemoryEntry, *, wait: bool = False) -> Change: ...

    def _list(self, prefix: str, *, delimiter: str | None = None,
              start_after: str | None = None) -> Iterator[dict[str, Any]]: ...

    def _call(self, operation: str, object_key: str, **params: Any) -> Any: ...

    def _failure(self, operation: str, object_key: str, exc: ClientError) -> S3AccessError: ...

HEADER = "Idempotency-Key"
KEY_META = "amfs-idempotency-key"
DIGEST_META = "amfs-request-digest"
KEY_RULE = "1 to 255 characters from A-Z a-z 0-9 - _ . : ~ + / ="
_KEY = re.compile(r"[A-Za-z0-9\-_.:~+/=]{1,255}")
WINDOW_SECONDS = 24 * 3600
CHECKED_VERSIONS = 4
CACHED_KEYS = 10_000


def validate_idempotency_key(value: str) -> str:
    if not _KEY.fullmatch(value):
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise InvalidNameError(HEADER, f"{shown!r} is not a valid key", KEY_RULE)
    return value


def request_digest(entry: MemoryEntry) -> str:
    """What was asked, without what each attempt makes up afresh (its time, and the
    session id the HTTP API draws when the caller sends none)."""
    asked = entry.model_dump(mode="json", exclude={"provenance": {"written_at", "session_id"}})
    canonical = json.dumps(asked, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class _Remembered:
    digest: str
    entry: MemoryEntry
    change: Change
    at: float


class _Cache:
    """This process's recent keyed writes, oldest dropped first."""

    def __init__(self) -> None:
        self._items: OrderedDict[tuple[str, str, str], _Remembered] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: tuple[str, str, str]) -> _Remembered | None:
        with self._lock:
            item = self._items.get(name)
            if item is not None and time.monotonic() - item.at > WINDOW_SECONDS:
                del self._items[name]
                return None
            return item

    def put(self, name: tuple[str, str, str], item: _Remembered) -> None:
        with self._lock:
            self._items[name] = item
            self._items.move_to_end(name)
            while len(self._items) > CACHED_KEYS:
                self._items.popitem(last=False)


_caches: weakref.WeakKeyDictionary[Any, _Cache] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def _cache_of(adapter: S3Adapter) -> _Cache:
    with _caches_lock:
        cache = _caches.get(adapter)
        if cache is None:
            cache = _caches[adapter] = _Cache()
        return cache


def write_once(adapter: S3Adapter, entry: MemoryEntry, key: str | None, *,
               known_version: int | None = None, wait_for_journal: bool = False,
               ) -> tuple[MemoryEntry, Change]:
    """``adapter.write_with_change(entry)``, unless a write with idempotency *key*
    already made a version of this entry: then that version, unchanged.

    A version found on S3 rather than in the cache may have lost its journal
    record with its answer, so it is journaled again (readers take a record
    twice; they cannot take a missing one).
    """
    if key is None:
        return adapter.write_with_change(
            entry, known_version=known_version, wait_for_journal=wait_for_journal)
    validate_idempotency_key(key)
    name = (entry.entity_path, entry.key, key)
    digest = request_digest(entry)
    cache = _cache_of(adapter)
    remembered = cache.get(name)
    if remembered is not None:
        _same_request(remembered.digest, digest, name, remembered.entry.version)
        return remembered.entry, remembered.change
    found = find_keyed_version(adapter, entry.entity_path, entry.key, key)
    if found is not None:
        version, stored_digest = found
        _same_request(stored_digest, digest, name, version)
        previous = adapter.read_at_version(entry.entity_path, entry.key, version)
        if previous is not None:
            change = adapter._journal_write(previous, wait=wait_for_journal)
            cache.put(name, _Remembered(digest, previous, change, time.monotonic()))
            return previous, change
    written, change = adapter.write_with_change(
        entry, known_version=known_version, wait_for_journal=wait_for_journal,
        metadata={KEY_META: key, DIGEST_META: digest})
    cache.put(name, _Remembered(digest, written, change, time.monotonic()))
    return written, change


def _same_request(stored: str, asked: str, name: tuple[str, str, str], version: int) -> None:
    if stored != asked:
        raise IdempotencyKeyReusedError(name[0], name[1], name[2], version)


def find_keyed_version(adapter: S3Adapter, entity_path: str, key: str, idempotency_key: str
                       ) -> tuple[int, str] | None:
    """(version, request digest) of the recent version written with *idempotency_key*."""
    layout = adapter.layout
    key_dir = layout.key_dir(entity_path, key)
    horizon = datetime.now(UTC).timestamp() - WINDOW_SECONDS
    recent: list[tuple[int, str]] = []
    for page in adapter._list(key_dir, delimiter="/"):
        for obj in page.get("Contents", []):
            number = layout.parse_version_file(obj["Key"][len(key_dir):])
            modified = obj.get("LastModified")
            if number is not None and (modified is None or modified.timestamp() >= horizon):
                recent.append((number, obj["Key"]))
    for number, object_key in sorted(recent, reverse=True)[:CHECKED_VERSIONS]:
        try:
            head = adapter._call("head_object", object_key, Key=object_key)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                continue
            raise adapter._failure("HeadObject", object_key, exc) from None
        metadata = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
        if metadata.get(KEY_META) == idempotency_key:
            return number, metadata.get(DIGEST_META, "")
    return None
