"""What the sidecar knows without asking S3.

``EntryIndex`` maps (entity_path, key) to the current version (and how many
versions exist), fed by the full scan, the journal poll and the sidecar's own
writes. ``ValueCache`` holds serialised entries in LRU order, bounded by their
size in bytes. Both are plain in-memory structures with a lock: the event loop
and the worker threads share them, and no method does I/O.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from amfs_core.models import MemoryEntry

from amfs_s3.layout import is_within

Name = tuple[str, str]


def encode_entry(entry: MemoryEntry) -> bytes:
    """An entry as the API answers it: the stored JSON (``model_dump(mode="json")``)
    plus ``evidence_status`` and ``posterior``, the two properties amfs-http-server
    adds beside it (``MemoryEntry`` ignores them when it parses the body back)."""
    p, n = entry.posterior
    extra = json.dumps({"evidence_status": entry.evidence_status, "posterior": {"p": p, "n": n}})
    return entry.model_dump_json().encode("utf-8")[:-1] + b"," + extra[1:].encode("utf-8")


def _interned(name: Name) -> Name:
    """*name* with its entity path shared by every key of the entity: a memory has far
    fewer entities than keys, and each name read from a listing, a snapshot or a
    request brings its own copy (about 70 bytes an entry at a million entries)."""
    entity = sys.intern(name[0])
    return name if entity is name[0] else (entity, name[1])


@dataclass(slots=True)
class _Slot:
    version: int
    versions: int
    touched: int  # the index's operation counter when this slot last moved
    scan_pass: int = 0  # the rolling scan's pass that last listed it (0: none)


class EntryIndex:
    """(entity_path, key) → current version; counts for stats and metrics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[Name, _Slot] = {}
        self._outcomes = 0
        # Outcomes added since the last listing (ref → operation counter).
        self._recent_outcomes: dict[str, int] = {}
        self._ops = 0
        self._versions_total = 0
        self.synced = False

    def current(self, entity_path: str, key: str) -> int:
        """The newest version known, 0 when the key is unknown."""
        slot = self._slots.get((entity_path, key))
        return slot.version if slot else 0

    def observe(self, entity_path: str, key: str, version: int) -> bool:
        """Note that *version* exists; True if it is newer than what was known."""
        with self._lock:
            self._ops += 1
            slot = self._slots.get((entity_path, key))
            if slot is None:
                self._slots[_interned((entity_path, key))] = _Slot(version, version, self._ops)
                self._versions_total += version
                return True
            if version <= slot.version:
                return False
            # Versions are contiguous (a writer creates N+1 only once N exists), so
            # version N means N versions, whatever order they arrive in: another
            # pod's v4 seen after our own v5 adds nothing. A scan counts exactly.
            grown = max(slot.versions + 1, version)
            self._versions_total += grown - slot.versions
            slot.version = version
            slot.versions = grown
            slot.touched = self._ops
            return True

    def mark(self) -> int:
        """A point in the index's history; pass it to :meth:`replace` after a scan
        that started here, so changes made meanwhile survive the replacement."""
        with self._lock:
            return self._ops

    def replace(
        self, scanned: Mapping[Name, Iterable[int]], *, since: int,
        unsettled: Mapping[Name, Iterable[int]] | None = None,
    ) -> list[tuple[str, str, int]]:
        """Adopt a full scan of entries/ (every version number of every key); see
        :meth:`adopt`.

        *unsettled* names, per key, versions the scan listed that are too young
        to judge: their journal records may still be on the way. Such a version
        is neither adopted nor reported unless the index already knew it (the
        journal, or this sidecar's own write, delivers it, or a later scan does
        once it has settled), so a scan does not announce a second time a write the
        journal is about to deliver.
        """
        return self.adopt(self._judge(scanned, unsettled), since=since)

    def replace_slice(
        self, scanned: Mapping[Name, Iterable[int]], *, scan_pass: int, since: int,
        unsettled: Mapping[Name, Iterable[int]] | None = None,
    ) -> list[tuple[str, str, int]]:
        """:meth:`replace` for one slice of the rolling scan: *scanned* is every
        version of the names the slice listed; no other name is touched. Names the
        memory no longer holds are dropped once a whole pass has missed them
        (:meth:`drop_unlisted`): a slice cannot tell which known names its range
        covers, as providers list keys in different orders."""
        return self.adopt_slice(self._judge(scanned, unsettled), scan_pass=scan_pass,
                                since=since)

    def _judge(
        self, scanned: Mapping[Name, Iterable[int]],
        unsettled: Mapping[Name, Iterable[int]] | None,
    ) -> dict[Name, tuple[int, int]]:
        """(current version, versions) per listed name, young versions left out."""
        young = {name: set(numbers) for name, numbers in (unsettled or {}).items()}
        with self._lock:
            slots = {name: (slot.version, slot.versions) for name, slot in self._slots.items()
                     if name in scanned}
        counts: dict[Name, tuple[int, int]] = {}
        for name, listed in scanned.items():
            numbers = sorted(listed)
            if not numbers:
                continue
            known, known_versions = slots.get(name, (0, 0))
            late = young.get(name, set())
            settled = [n for n in numbers if n not in late]
            top = max([known if known in numbers else 0, *settled[-1:]])
            if top:
                counts[name] = (top, sum(1 for n in numbers if n <= top))
            elif known:
                # Listed, but only versions the journal has yet to deliver:
                # what the index knows stands.
                counts[name] = (known, known_versions)
        return counts

    def adopt(
        self, counts: Mapping[Name, tuple[int, int]], *, since: int, report: bool = True,
    ) -> list[tuple[str, str, int]]:
        """Adopt a view of the whole memory — (entity, key) → (current version,
        versions), from a scan or a snapshot — and return the (entity, key,
        version) it shows newer than the index knew (nothing unless *report*: a
        cold start's empty index would list every name, a million tuples at a
        million entries, for nobody).

        Keys changed after *since* (own writes, polls that overlapped the scan)
        keep their newer state rather than going back to the view's.
        """
        newer: list[tuple[str, str, int]] = []
        with self._lock:
            fresh: dict[Name, _Slot] = {}
            for name, (top, versions) in counts.items():
                old = self._slots.get(name)
                if old is not None and old.touched > since and old.version >= top:
                    fresh[name] = old
                    continue
                if report and (old is None or top > old.version):
                    newer.append((name[0], name[1], top))
                fresh[_interned(name)] = _Slot(top, versions, old.touched if old else 0)
            for name, old in self._slots.items():
                if name not in fresh and old.touched > since:
                    fresh[name] = old
            self._slots = fresh
            self._versions_total = sum(slot.versions for slot in fresh.values())
        return newer

    def adopt_slice(
        self, counts: Mapping[Name, tuple[int, int]], *, scan_pass: int, since: int,
    ) -> list[tuple[str, str, int]]:
        """:meth:`adopt` for the names of one slice, stamped as listed by *scan_pass*;
        every other name keeps what it has. In place: the lock is held for the
        slice's names only."""
        newer: list[tuple[str, str, int]] = []
        with self._lock:
            for name, (top, versions) in counts.items():
                old = self._slots.get(name)
                if old is not None and old.touched > since and old.version >= top:
                    old.scan_pass = scan_pass
                    continue
                if old is None or top > old.version:
                    newer.append((name[0], name[1], top))
                self._versions_total += versions - (old.versions if old else 0)
                self._slots[_interned(name)] = _Slot(top, versions, old.touched if old else 0,
                                                     scan_pass)
        return newer

    def drop_unlisted(self, scan_pass: int, *, since: int) -> int:
        """After a whole pass of the rolling scan that began at *since*: forget the
        names it never listed and nothing has touched since (gone from the memory,
        as a full scan forgets them); how many went."""
        with self._lock:
            gone = [name for name, slot in self._slots.items()
                    if slot.scan_pass != scan_pass and slot.touched <= since]
            for name in gone:
                self._versions_total -= self._slots.pop(name).versions
        return len(gone)

    def counts(self) -> dict[Name, tuple[int, int]]:
        """Every name's (current version, versions), read at one moment: a snapshot's
        entries. Under the lock, so no name's pair is read halfway through a change."""
        with self._lock:
            return {name: (slot.version, slot.versions) for name, slot in self._slots.items()}

    def versions_of(self, entity_path: str, key: str) -> int:
        slot = self._slots.get((entity_path, key))
        return slot.versions if slot else 0

    def set_outcomes(self, count: int, *, listed: set[str] | None = None,
                     since: int | None = None) -> None:
        """Adopt an outcome count. With the refs a listing showed (*listed*) and the
        point it started at (*since*), outcomes added meanwhile that the listing
        missed are kept on top, and those it saw are not counted twice."""
        with self._lock:
            if listed is not None and since is not None:
                late = [ref for ref, op in self._recent_outcomes.items()
                        if op > since and ref not in listed]
                self._recent_outcomes = {ref: self._recent_outcomes[ref] for ref in late}
                count = len(listed) + len(late)
            self._outcomes = count

    def seed_outcomes(self, refs: Iterable[str]) -> None:
        """Outcomes already in the count (a snapshot's recent ones): a journal
        record of one of them adds nothing."""
        with self._lock:
            self._ops += 1
            for ref in refs:
                self._recent_outcomes.setdefault(ref, self._ops)

    def recent_outcome_refs(self) -> set[str]:
        with self._lock:
            return set(self._recent_outcomes)

    def add_outcome(self, outcome_ref: str | None = None) -> None:
        with self._lock:
            self._ops += 1
            if outcome_ref is not None:
                if outcome_ref in self._recent_outcomes:
                    return  # the same record again: one object, one outcome
                self._recent_outcomes[outcome_ref] = self._ops
            self._outcomes += 1

    def names(
        self, entity_path: str | None = None, *, subtree: bool = False
    ) -> list[tuple[str, str, int]]:
        """Current (entity, key, version), sorted; *entity_path* matches exactly
        unless *subtree* (then it and everything below it)."""
        with self._lock:
            items = list(self._slots.items())
        if entity_path in (None, "", "*"):
            picked = items
        elif subtree:
            picked = [(n, s) for n, s in items if is_within(n[0], entity_path)]
        else:
            picked = [(n, s) for n, s in items if n[0] == entity_path]
        return sorted((n[0], n[1], s.version) for n, s in picked)

    def count(self, kind: str) -> int:
        """Object counts by metric kind: entries, versions, outcomes."""
        if kind == "entries":
            return len(self._slots)
        if kind == "versions":
            return self._versions_total
        if kind == "outcomes":
            return self._outcomes
        raise ValueError(f"unknown object kind {kind!r} (entries, versions or outcomes)")

    def entity_count(self) -> int:
        with self._lock:
            return len({name[0] for name in self._slots})


@dataclass(frozen=True)
class CachedEntry:
    entry: MemoryEntry
    body: bytes


class ValueCache:
    """Current entries in LRU order, bounded by the bytes of their JSON bodies."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache size {max_bytes} must be >= 0 bytes")
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._items: OrderedDict[Name, CachedEntry] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, entity_path: str, key: str, version: int) -> CachedEntry | None:
        """The cached entry if it is exactly *version*; counts a hit or a miss."""
        name = (entity_path, key)
        with self._lock:
            item = self._items.get(name)
            if item is None or item.entry.version != version:
                self.misses += 1
                return None
            self._items.move_to_end(name)
            self.hits += 1
            return item

    def put(self, entry: MemoryEntry, body: bytes | None = None) -> CachedEntry:
        """Cache *entry* unless a newer version is already cached; returns what
        is cached for its name afterwards (or the entry itself if too large)."""
        body = encode_entry(entry) if body is None else body
        item = CachedEntry(entry, body)
        name = (entry.entity_path, entry.key)
        with self._lock:
            old = self._items.get(name)
            if old is not None and old.entry.version > entry.version:
                return old
            if len(body) > self.max_bytes:
                return item
            if old is not None:
                self.bytes -= len(old.body)
            self._items[name] = item
            self._items.move_to_end(name)
            self.bytes += len(body)
            while self.bytes > self.max_bytes and self._items:
                _, evicted = self._items.popitem(last=False)
                self.bytes -= len(evicted.body)
                self.evictions += 1
        return item

    def peek(self, entity_path: str, key: str) -> CachedEntry | None:
        """Whatever version is cached, without touching LRU order or counters."""
        return self._items.get((entity_path, key))

    def stats(self) -> dict[str, int]:
        return {
            "items": len(self._items),
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
        }
