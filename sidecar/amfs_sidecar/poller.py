"""Change detection across pods: the journal cursor and the adapter's watch loop.

Every write PUTs a small journal record after its version object. A poller
lists ``journal/`` with ``StartAfter`` = (newest key seen minus a look-back window),
so one poll is about one LIST whatever the number of entries; the look-back
absorbs clock skew between writers and LIST staleness, and the cursor's memory
of recently seen keys keeps the overlap from delivering anything twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from amfs_core.abc import WatchHandle
from amfs_core.models import MemoryEntry

from amfs_sidecar.layout import Layout, is_within

if TYPE_CHECKING:
    from amfs_sidecar.adapter import S3Adapter

logger = logging.getLogger(__name__)

DEFAULT_LOOKBACK_MS = 30_000


@dataclass(frozen=True)
class Change:
    """One journal record: a version written or an outcome committed."""

    journal_key: str
    kind: str  # "write" | "outcome"
    written_at_ms: int
    writer: str
    entity_path: str | None = None
    key: str | None = None
    version: int | None = None
    outcome_ref: str | None = None

    def to_record(self) -> dict[str, Any]:
        """The JSON body stored at ``journal_key``."""
        record: dict[str, Any] = {"kind": self.kind, "written_at_ms": self.written_at_ms}
        record["writer"] = self.writer
        if self.kind == "write":
            record.update(entity_path=self.entity_path, key=self.key, version=self.version)
        else:
            record["outcome_ref"] = self.outcome_ref
        return record

    @classmethod
    def from_record(cls, journal_key: str, record: dict[str, Any]) -> Change:
        kind = record.get("kind")
        if kind not in {"write", "outcome"}:
            raise ValueError(f"journal record {journal_key} has unknown kind {kind!r}")
        return cls(
            journal_key=journal_key,
            kind=kind,
            written_at_ms=int(record["written_at_ms"]),
            writer=str(record.get("writer", "")),
            entity_path=record.get("entity_path"),
            key=record.get("key"),
            version=record.get("version"),
            outcome_ref=record.get("outcome_ref"),
        )


@dataclass
class JournalCursor:
    """Where a poller stands in the journal. Pure: no I/O, clock passed in.

    ``seen`` holds the keys delivered within the look-back window so a
    re-listed overlap is never delivered twice; older keys are forgotten.
    """

    layout: Layout
    lookback_ms: int = DEFAULT_LOOKBACK_MS
    high_water_ms: int = 0
    seen: dict[str, int] = field(default_factory=dict)
    resume_key: str | None = None

    @classmethod
    def starting_now(cls, layout: Layout, now_ms: int, lookback_ms: int = DEFAULT_LOOKBACK_MS):
        """A cursor that ignores history: only changes from now on."""
        return cls(layout=layout, lookback_ms=lookback_ms, high_water_ms=now_ms)

    @classmethod
    def resuming_after(
        cls, layout: Layout, journal_key: str, lookback_ms: int = DEFAULT_LOOKBACK_MS
    ) -> JournalCursor:
        """A cursor for a client that last saw *journal_key* (SSE Last-Event-ID).

        Everything at or before that key counts as seen; keys inside the
        look-back window that sort after it are still delivered.
        """
        name = layout.parse_journal_key(journal_key)
        if name is None:
            raise ValueError(f"not a journal key of this memory: {journal_key!r}")
        return cls(
            layout=layout, lookback_ms=lookback_ms, high_water_ms=name.ms, resume_key=journal_key
        )

    def start_after(self) -> str:
        if self.high_water_ms == 0:
            return self.layout.journal_root
        return self.layout.journal_start_after(self.high_water_ms - self.lookback_ms)

    def pending(self, keys: list[str]) -> list[str]:
        """The keys not yet confirmed, in journal order. Changes nothing."""
        return [
            key for key in sorted(keys)
            if key not in self.seen
            and self.layout.parse_journal_key(key) is not None
            and (self.resume_key is None or key > self.resume_key)
        ]

    def confirm(self, journal_key: str) -> None:
        """*journal_key* was handled: never deliver it again, and move the window on.

        Only handled keys advance the high-water mark, so a record that could
        not be handled is listed again by the next poll.
        """
        name = self.layout.parse_journal_key(journal_key)
        if name is None:
            return
        self.seen[journal_key] = name.ms
        self.high_water_ms = max(self.high_water_ms, name.ms)
        self._forget_old()

    def accept(self, keys: list[str]) -> list[str]:
        """Pending keys, confirmed at once (for callers that cannot fail afterwards)."""
        fresh = self.pending(keys)
        for key in fresh:
            self.confirm(key)
        return fresh

    def mark_seen(self, journal_key: str) -> None:
        """Record a change this process made itself, so polling never echoes it."""
        name = self.layout.parse_journal_key(journal_key)
        if name is not None:
            self.seen[journal_key] = name.ms

    def _forget_old(self) -> None:
        horizon = self.high_water_ms - 2 * self.lookback_ms
        for key in [k for k, ms in self.seen.items() if ms < horizon]:
            del self.seen[key]


Callback = Callable[[MemoryEntry], None]


class WatchLoop:
    """The adapter's cross-process watch: a daemon thread that runs only while
    something watches, so an idle adapter makes no S3 requests."""

    def __init__(self, adapter: S3Adapter) -> None:
        self._adapter = adapter
        self._lock = threading.Lock()
        self._watchers: dict[int, tuple[str, Callback]] = {}
        self._next_id = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._cursor: JournalCursor | None = None
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
        self._cursor = JournalCursor.starting_now(self._adapter.layout, _now_ms())
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

    def note_local(self, change: Change, entry: MemoryEntry) -> None:
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
        versions = self._adapter.scan_versions()
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


def _now_ms() -> int:
    return int(time.time() * 1000)
