"""The index snapshot and the snapshot writer's lease: formats and key math. Pure.

```
{prefix}{namespace}/index/snapshot-{covers_ms:013d}.json.gz   every (entity, key) → current
                                                               version and version count
{prefix}{namespace}/index/lease-{term:010d}.json               who writes snapshots, until when
```

A snapshot *covers* a storage time before which every journalled version is in it
(the writer's index, kept current by the journal, up to where its polls have read),
so a cold start reads the newest snapshot and then the journal from ``covers_ms``
minus the look-back. A version whose writer wrote no journal record is in it once
the writer's rolling scan of ``entries/`` has passed it. ``scan_after`` (additive,
absent from older snapshots and leases) records where that scan goes on: the
object key the next slice lists after, so a sidecar taking over the lease carries
on rather than starting again. Leases are never overwritten:
taking or renewing one is creating the next term with ``If-None-Match: *``, so of
two contenders exactly one wins, on any provider that honours conditional writes.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from amfs_s3.exceptions import AdapterError
from amfs_s3.layout import Layout

SNAPSHOT_FORMAT = 1
_ENCODE_CHUNK = 10_000  # entries per write into the compressor
_SNAPSHOT_FILE = re.compile(r"^snapshot-(\d{13})\.json\.gz$")
_LEASE_FILE = re.compile(r"^lease-(\d{10})\.json$")

Name = tuple[str, str]


@dataclass(frozen=True)
class IndexSnapshot:
    """What the memory held when a scan began at ``covers_ms`` (storage time)."""

    covers_ms: int
    writer: str
    entries: Mapping[Name, tuple[int, int]]  # (entity, key) → (current version, versions)
    outcomes: int
    # Refs of counted outcomes whose journal records a cold start may read again
    # (from covers_ms minus the look-back on): it counts those once, not twice.
    recent_outcomes: frozenset[str] = frozenset()
    # Where the rolling scan of entries/ goes on (None: from the start).
    scan_after: str | None = None


@dataclass(frozen=True)
class Lease:
    term: int
    holder: str
    expires_at_ms: int
    # Where the holder's scan of entries/ began this term: an heir carries on from it.
    scan_after: str | None = None

    def held_by_other_than(self, holder: str, now_ms: int) -> bool:
        return self.holder != holder and self.expires_at_ms > now_ms


def snapshot_key(layout: Layout, covers_ms: int) -> str:
    return f"{layout.index_root}snapshot-{covers_ms:013d}.json.gz"


def parse_snapshot_key(layout: Layout, object_key: str) -> int | None:
    """``…/index/snapshot-0001700000000000.json.gz`` → its ``covers_ms``."""
    if not object_key.startswith(layout.index_root):
        return None
    match = _SNAPSHOT_FILE.match(object_key[len(layout.index_root):])
    return int(match.group(1)) if match else None


def lease_key(layout: Layout, term: int) -> str:
    return f"{layout.index_root}lease-{term:010d}.json"


def parse_lease_key(layout: Layout, object_key: str) -> int | None:
    if not object_key.startswith(layout.index_root):
        return None
    match = _LEASE_FILE.match(object_key[len(layout.index_root):])
    return int(match.group(1)) if match else None


def encode_snapshot(snapshot: IndexSnapshot) -> bytes:
    """The gzipped JSON document, ``entries`` last and sorted. Written into the
    compressor a chunk of entries at a time: the whole document as one list of lists,
    one string and one bytes object cost ~300 MiB at a million entries."""
    head = {
        "format": SNAPSHOT_FORMAT,
        "covers_ms": snapshot.covers_ms,
        "writer": snapshot.writer,
        "outcomes": snapshot.outcomes,
        "recent_outcomes": sorted(snapshot.recent_outcomes),
        "scan_after": snapshot.scan_after,
    }
    rows = sorted(snapshot.entries.items())
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6, mtime=0) as out:
        out.write(_json(head)[:-1] + b',"entries":[')
        for start in range(0, len(rows), _ENCODE_CHUNK):
            chunk = [[entity, key, current, versions]
                     for (entity, key), (current, versions) in rows[start:start + _ENCODE_CHUNK]]
            out.write((b"," if start else b"") + _json(chunk)[1:-1])
        out.write(b"]}")
    return buffer.getvalue()


def _json(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def decode_snapshot(object_key: str, body: bytes) -> IndexSnapshot:
    try:
        doc = json.loads(gzip.decompress(body))
        if doc.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, this sidecar reads {SNAPSHOT_FORMAT}")
        rows = doc.pop("entries")
        if not isinstance(rows, list):
            raise ValueError(f"entries is a {type(rows).__name__}, not a list")
        rows.reverse()
        entries: dict[Name, tuple[int, int]] = {}
        # Popped one by one, each row's list is freed as its entry is made: the decoded
        # rows and the dict at once were the peak of a cold start (a million entries).
        # Entity paths are interned, as the index keeps them (one string per entity).
        while rows:
            entity, key, current, versions = rows.pop()
            entries[(sys.intern(str(entity)), str(key))] = (int(current), int(versions))
        return IndexSnapshot(covers_ms=int(doc["covers_ms"]), writer=str(doc["writer"]),
                             entries=entries, outcomes=int(doc["outcomes"]),
                             recent_outcomes=frozenset(
                                 str(ref) for ref in doc.get("recent_outcomes", [])),
                             scan_after=_optional_str(doc.get("scan_after")))
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise AdapterError(f"index snapshot {object_key!r} is unreadable: {exc}") from None


def encode_lease(lease: Lease) -> bytes:
    return json.dumps({"term": lease.term, "holder": lease.holder,
                       "expires_at_ms": lease.expires_at_ms,
                       "scan_after": lease.scan_after}).encode("utf-8")


def decode_lease(term: int, body: bytes) -> Lease:
    try:
        doc = json.loads(body)
        return Lease(term=term, holder=str(doc["holder"]),
                     expires_at_ms=int(doc["expires_at_ms"]),
                     scan_after=_optional_str(doc.get("scan_after")))
    except (ValueError, KeyError, TypeError) as exc:
        raise AdapterError(f"lease term {term} is unreadable: {exc}") from None


def _optional_str(value: object) -> str | None:
    """A position from a document: absent or null in older ones."""
    return None if value is None else str(value)
