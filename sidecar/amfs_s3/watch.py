"""The adapter's cross-process watch: a thread that polls the journal while
something watches, so an idle adapter makes no S3 requests.

It knows the adapter only through :class:`ChangeSource`, so this module does not
import the adapter (the adapter imports it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from amfs_core.abc import WatchHandle
from amfs_core.models import MemoryEntry

from amfs_s3.clock import StorageClock
from amfs_s3.config import S3Settings
from amfs_s3.journal import Change, JournalCursor
from amfs_s3.layout import Layout, is_within

logger = logging.getLogger(__name__)


class ChangeSource(Protocol):
    """What the watch loop needs from an adapter."""

    layout: Layout
    settings: S3Settings
    clock: StorageClock

    def poll_journal(self, cursor: JournalCursor, *, confirm: bool = True) -> list[Change]: ...

    def flush_journal(self) -> list[Change]: ...

    def read_at_version(self, entity_path: str, key: str, version: int) -> MemoryEntry | None: ...

    def scan_versions(
        self, entity_path: str | None = None, *, subtree: bool = True,
        modified_before_ms: int | None = None,
    ) -> dict[tuple[str, str], list[int]]: ...


Callback = Callable[[MemoryEntry], None]
BASELINE_MARGIN_MS = 2_000


class WatchLoop:
    """The adapter's cross-process watch: a daemon thread that runs only while
    something watches, so an idle adapter makes no S3 requests."""

    def __init__(self, adapter: ChangeSource) -> None:
        self._adapter = adapter
        self._lock = threading.Lock()
        self._watchers: dict[int, tuple[str, Callback]] = {}
        self._next_id = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._cursor: JournalCursor | None = None
        self._started_ms = 0
        self._known_versions: dict[tuple[str, str], int] = {}
        self._baselined = False

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def add(self, entity_path: str, callback: Callback) -> WatchHandle:
        with self._lock:
            watcher_id = self._next_id
            self._next_id += 1
            self._watchers[watcher_id] = (entity_path, callback)
            if not self.running:
                self._start()
        return WatchHandle(lambda: self._remove(watcher_id))

    def _remove(self, watcher_id: int) -> None:
        with self._lock:
            self._watchers.pop(watcher_id, None)
            idle = not self._watchers
        if idle:
            self.stop()

    def _start(self) -> None:
        self._stop = threading.Event()
        clock = self._adapter.clock
        self._started_ms = clock.now_ms()
        self._cursor = JournalCursor.starting_now(
            self._adapter.layout, self._started_ms, clock=clock.now_ms
        )
        self._known_versions = {}
        self._baselined = False
        self._thread = threading.Thread(target=self._run, name="amfs-s3-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        self._thread = None

    def note_local(self, change: Change, entry: MemoryEntry | None) -> None:
        """Deliver this adapter's own write at once and keep polling from echoing it."""
        if self._cursor is not None:
            self._cursor.mark_seen(change.journal_key)
        if entry is not None and self.running:
            self._deliver(entry)

    def _run(self) -> None:
        poll_interval = self._adapter.settings.poll_interval
        resync_interval = self._adapter.settings.resync_interval
        next_resync = time.monotonic()
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_resync:
                    self._resync(baseline=not self._baselined)
                    self._baselined = True
                    next_resync = time.monotonic() + resync_interval
                self._poll()
            except Exception as exc:  # the loop must outlive a failed poll
                logger.warning("watch poll failed, retrying in %.1fs: %s", poll_interval, exc)
            self._stop.wait(poll_interval)

    def _poll(self) -> None:
        cursor = self._cursor
        assert cursor is not None
        self._adapter.flush_journal()
        # Confirm each change only once it is delivered: if reading an entry
        # fails, it and everything after it are listed again by the next poll.
        for change in self._adapter.poll_journal(cursor, confirm=False):
            self._handle(change)
            cursor.confirm(change.journal_key)

    def _handle(self, change: Change) -> None:
        if change.kind != "write" or change.entity_path is None or change.key is None:
            return
        if not change.version:
            return
        known = self._known_versions.get((change.entity_path, change.key), 0)
        if change.version <= known or not self._wanted(change.entity_path):
            return
        entry = self._adapter.read_at_version(change.entity_path, change.key, change.version)
        if entry is not None:
            self._deliver(entry)

    def _resync(self, *, baseline: bool) -> None:
        """Catch writers that wrote no journal: compare the listing with what was seen.

        Every version above the last one delivered is delivered, in order, so a
        resync that runs before a journal poll (after an outage) skips nothing.
        """
        # The baseline is what existed before watch(): a version stored after it began
        # (the listing runs on this thread, later) is left to the journal to deliver.
        # LastModified is whole seconds on many providers, hence the margin: a write
        # just before watch() may be delivered too, at least once beats never.
        versions = self._adapter.scan_versions(
            modified_before_ms=self._started_ms - BASELINE_MARGIN_MS if baseline else None)
        for (entity_path, key), numbers in versions.items():
            known = self._known_versions.get((entity_path, key))
            if baseline:
                self._known_versions[(entity_path, key)] = max(numbers)
                continue
            if not self._wanted(entity_path):
                self._known_versions[(entity_path, key)] = max(max(numbers), known or 0)
                continue
            for number in numbers:
                if number <= (known or 0):
                    continue
                entry = self._adapter.read_at_version(entity_path, key, number)
                if entry is not None:
                    self._deliver(entry)

    def _deliver(self, entry: MemoryEntry) -> None:
        key = (entry.entity_path, entry.key)
        self._known_versions[key] = max(entry.version, self._known_versions.get(key, 0))
        self._dispatch(entry)

    def _wanted(self, entity_path: str) -> bool:
        with self._lock:
            return any(is_within(entity_path, scope) for scope, _ in self._watchers.values())

    def _dispatch(self, entry: MemoryEntry) -> None:
        with self._lock:
            targets = [
                cb for scope, cb in self._watchers.values() if is_within(entry.entity_path, scope)
            ]
        for callback in targets:
            try:
                callback(entry)
            except Exception:
                logger.exception("watch callback failed for %s/%s", entry.entity_path, entry.key)
