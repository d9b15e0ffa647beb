"""Reading and writing the index snapshot, the lease and the journal's tail in S3,
and listing ``entries/`` and ``outcomes/`` a slice at a time.

One listing of ``index/`` tells a sidecar both who holds the lease and which
snapshot is newest, so a sidecar that does not hold the lease pays one LIST
(and one small GET) per interval, whatever the size of the memory.

The lease holder's scan rolls: each interval it lists a bounded number of pages
of ``entries/`` (and of ``outcomes/``), from where the previous interval stopped
(``StartAfter``), and wraps to the start at the end. A slice of ``entries/``
ends where no (entity, key) has versions on both sides (:func:`entry_slice_cut`),
so every name in a slice has all its versions counted. Positions are object keys
handed back to the provider as ``StartAfter``, never compared here: each provider
lists in its own order.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from amfs_s3.adapter import S3Adapter
from amfs_s3.exceptions import S3AccessError
from amfs_s3.layout import Layout
from amfs_s3.snapshot import (
    IndexSnapshot,
    Lease,
    decode_lease,
    decode_snapshot,
    encode_lease,
    encode_snapshot,
    lease_key,
    parse_lease_key,
    parse_snapshot_key,
    snapshot_key,
)
from amfs_s3.timestamps import listed_modified_ms

logger = logging.getLogger(__name__)

SNAPSHOTS_KEPT = 2
LEASES_KEPT = 2
DELETE_BATCH = 1000
# The most keys one ListObjectsV2 page returns on every S3 provider.
LIST_PAGE_SIZE = 1000

Name = tuple[str, str]
# An object-key segment a version file ("v12.json") can sort on both sides of:
# "v1/" sorts after "v1.json" and before "v10.json". Only such a segment lets a
# name's versions interleave with the objects of an entity below it.
_STRADDLING_SEGMENT = re.compile(r"v[1-9]")


# -- key math for slices (pure) ----------------------------------------------------------


def _is_version_of(directory: str, object_key: str) -> bool:
    """Whether *object_key* is a version file directly under *directory* (a key's folder)."""
    return (object_key.startswith(directory)
            and Layout.parse_version_file(object_key[len(directory):]) is not None)


def entry_block(root: str, segments: Sequence[str]) -> str:
    """The folder (object-key prefix) of a key whose object-key segments are *segments*."""
    return root + "".join(s + "/" for s in segments)


def open_folder(root: str, keys: Sequence[str]) -> str | None:
    """The folder a slice of *keys* (one listing of ``entries/``, in order, that goes
    on beyond them) must end before, so that no (entity, key) has versions on both
    sides of its end; None when the last object is in no key's folder.

    The listing may have stopped inside the last object's (entity, key), so the cut
    falls before that name's folder, ``root/s1/…/sJ/``. Its versions are the direct
    ``v{n}.json`` of that folder, but the folders *above* it are keys too (entity
    ``s1/…/s(i-1)``, key ``si``), whose versions sort around their subfolders: a folder
    ``v1…/`` sorts between ``v1.json`` and ``v10.json``. So the cut moves up past every
    such folder whose parent has a version in the listing (a parent with none there has
    all its versions after the cut, or — the previous cut being safe — before the
    listing began).
    """
    segments = keys[-1][len(root):].split("/")[:-1]  # the folders above the last object
    if len(segments) < 2:
        return None
    for level in range(2, len(segments)):
        parent = entry_block(root, segments[:level])
        if (_STRADDLING_SEGMENT.match(segments[level])
                and any(_is_version_of(parent, k) for k in keys)):
            return parent
    return entry_block(root, segments)


def entry_slice_cut(root: str, keys: Sequence[str]) -> int:
    """How many of *keys* a slice keeps: those before :func:`open_folder`; 0 when the
    listing is all inside it (then that folder is listed to its end).

    Only the listing's own order is used, never a comparison of keys: providers
    order differently (AWS and moto by the key's bytes, SeaweedFS folder by folder,
    so ``a/b`` comes before ``a%2Fb`` there), but in every order a folder's objects
    are listed together, so they are the run at the end of *keys*."""
    if not keys:
        return 0
    folder = open_folder(root, keys)
    if folder is None:
        return len(keys)
    kept = len(keys)
    while kept and keys[kept - 1].startswith(folder):
        kept -= 1
    return kept


@dataclass(frozen=True)
class EntrySlice:
    """What one slice of the rolling scan of ``entries/`` listed: every version of
    every name whose objects lie in (*after*, *through*] of the provider's order."""

    after: str | None  # listed from just after this object key (None: the start)
    through: str | None  # to this object key, inclusive (None: the end of entries/)
    found: dict[Name, list[tuple[int, int]]]  # name → [(version, LastModified ms)]
    pages: int  # LIST requests made

    @property
    def reached_end(self) -> bool:
        return self.through is None


@dataclass(frozen=True)
class OutcomeSlice:
    """What one slice of the rolling listing of ``outcomes/`` found."""

    after: str | None
    through: str | None  # None: the listing reached the end of outcomes/
    found: dict[str, int]  # ref → LastModified ms
    pages: int

    @property
    def reached_end(self) -> bool:
        return self.through is None


@dataclass(frozen=True)
class IndexListing:
    """What one LIST of ``index/`` shows."""

    snapshots: list[int] = field(default_factory=list)  # covers_ms, oldest first
    lease_terms: list[int] = field(default_factory=list)  # oldest first

    @property
    def newest_snapshot(self) -> int | None:
        return self.snapshots[-1] if self.snapshots else None


class IndexStore:
    """The ``index/`` folder of one memory, through the memory's adapter."""

    def __init__(self, adapter: S3Adapter) -> None:
        self.adapter = adapter
        self.layout = adapter.layout
        self._delete_denied_reported = False

    def scan_entries(self) -> dict[tuple[str, str], list[tuple[int, int]]]:
        """Every (entity, key) with its (version, LastModified ms), from listings
        alone: one LIST per 1,000 objects under ``entries/``, no GETs.

        LastModified is what lets the scan tell a version whose journal record
        is still on its way (written moments ago) from one that has none.
        """
        return self._entries_found(obj for page in self.adapter._list(self.layout.entries_root)
                                   for obj in page.get("Contents", []))

    def _entries_found(self, objects: Iterable[dict[str, Any]]
                       ) -> dict[Name, list[tuple[int, int]]]:
        """Listed objects of entries/ as name → [(version, LastModified ms)]."""
        found: dict[Name, list[tuple[int, int]]] = {}
        for obj in objects:
            parsed = self.layout.parse_entry_key(obj["Key"])
            if parsed is not None:
                found.setdefault((parsed.entity_path, parsed.key), []).append(
                    (parsed.version, listed_modified_ms(obj)))
        return found

    def scan_outcomes(self) -> dict[str, int]:
        """Every stored outcome's ref → LastModified ms, from listings alone."""
        found: dict[str, int] = {}
        for page in self.adapter._list(self.layout.outcomes_root):
            for obj in page.get("Contents", []):
                ref = self.layout.parse_outcome_key(obj["Key"])
                if ref:
                    found[ref] = listed_modified_ms(obj)
        return found

    # -- the rolling scan --------------------------------------------------------

    def _pages(self, prefix: str, after: str | None, page_size: int
               ) -> Iterator[tuple[list[dict[str, Any]], bool]]:
        """The pages of a listing of *prefix* after *after*: each page's objects, and
        whether more follow. A slice may stop between pages; the next one goes on with
        StartAfter from its last key, as the position must survive the interval, the
        lease and a snapshot (a continuation token would not)."""
        for page in self.adapter._list(prefix, start_after=after, page_size=page_size):
            contents: list[dict[str, Any]] = page.get("Contents", [])
            yield contents, bool(page.get("IsTruncated")) and bool(contents)

    def scan_entry_slice(self, after: str | None, *, pages: int,
                         page_size: int = LIST_PAGE_SIZE) -> EntrySlice:
        """At most *pages* LISTs of ``entries/`` after *after* (None: from the start),
        ending where no name has versions on both sides; a name whose folder alone
        outgrows the pages is listed to its end anyway (bounded by that folder)."""
        root = self.layout.entries_root
        listed: list[dict[str, Any]] = []
        made, more = 0, False
        for contents, more in self._pages(root, after, page_size):
            made += 1
            listed.extend(contents)
            if not more or made >= max(pages, 1):
                break
        through: str | None = None
        if more:
            keys = [obj["Key"] for obj in listed]
            kept = entry_slice_cut(root, keys)
            if kept == 0:
                folder = open_folder(root, keys) or root
                # The folder to its end: bounded by that one key's objects.
                for contents, _ in self._pages(folder, keys[-1], page_size):
                    made += 1
                    listed.extend(contents)
                kept = len(listed)
            listed = listed[:kept]
            through = listed[-1]["Key"]
        return EntrySlice(after=after, through=through, found=self._entries_found(listed),
                          pages=made)

    def scan_outcome_slice(self, after: str | None, *, pages: int,
                           page_size: int = LIST_PAGE_SIZE) -> OutcomeSlice:
        """At most *pages* LISTs of ``outcomes/`` after *after* (None: from the start).
        Outcome objects are flat (one per ref), so any object key is a slice end."""
        found: dict[str, int] = {}
        made, more, position = 0, False, after
        for contents, more in self._pages(self.layout.outcomes_root, after, page_size):
            made += 1
            for obj in contents:
                ref = self.layout.parse_outcome_key(obj["Key"])
                if ref:
                    found[ref] = listed_modified_ms(obj)
            if contents:
                position = contents[-1]["Key"]
            if not more or made >= max(pages, 1):
                break
        return OutcomeSlice(after=after, through=position if more else None, found=found,
                            pages=made)

    def listing(self) -> IndexListing:
        snapshots: list[int] = []
        terms: list[int] = []
        for page in self.adapter._list(self.layout.index_root):
            for obj in page.get("Contents", []):
                covers = parse_snapshot_key(self.layout, obj["Key"])
                if covers is not None:
                    snapshots.append(covers)
                    continue
                term = parse_lease_key(self.layout, obj["Key"])
                if term is not None:
                    terms.append(term)
        return IndexListing(sorted(snapshots), sorted(terms))

    # -- snapshots -------------------------------------------------------------

    def read_snapshot(self, covers_ms: int) -> IndexSnapshot | None:
        object_key = snapshot_key(self.layout, covers_ms)
        body = self.adapter._stored_bytes(object_key)
        return None if body is None else decode_snapshot(object_key, body)

    def write_snapshot(self, snapshot: IndexSnapshot) -> str:
        object_key = snapshot_key(self.layout, snapshot.covers_ms)
        self.adapter._call("put_object", object_key, Key=object_key,
                           Body=encode_snapshot(snapshot), ContentType="application/gzip")
        return object_key

    def prune_snapshots(self, listing: IndexListing, keep: int = SNAPSHOTS_KEPT) -> None:
        old = listing.snapshots[:-keep] if keep else listing.snapshots
        self._delete([snapshot_key(self.layout, covers) for covers in old])

    # -- the lease -------------------------------------------------------------

    def read_lease(self, listing: IndexListing) -> Lease | None:
        if not listing.lease_terms:
            return None
        term = listing.lease_terms[-1]
        body = self.adapter._stored_bytes(lease_key(self.layout, term))
        return None if body is None else decode_lease(term, body)

    def take_lease(self, holder: str, current: Lease | None, *, now_ms: int,
                   duration_ms: int, scan_after: str | None = None) -> Lease | None:
        """Create the next term for *holder*, recording where its scan of entries/
        begins (*scan_after*); None if someone else holds a live lease or won the
        race for that term."""
        if current is not None and current.held_by_other_than(holder, now_ms):
            return None
        lease = Lease(term=(current.term + 1) if current else 1, holder=holder,
                      expires_at_ms=now_ms + duration_ms, scan_after=scan_after)
        if not self.adapter._put_new(lease_key(self.layout, lease.term), encode_lease(lease)):
            return None
        if current is not None:
            self._delete([lease_key(self.layout, term)
                          for term in range(max(1, lease.term - 10), lease.term - LEASES_KEPT + 1)])
        return lease

    # -- the journal's tail ----------------------------------------------------------

    def trim_journal(self, before_ms: int) -> int:
        """Delete journal records stamped before *before_ms*; how many went."""
        stop = self.layout.journal_start_after(before_ms)
        doomed: list[str] = []
        for page in self.adapter._list(self.layout.journal_root):
            keys = [obj["Key"] for obj in page.get("Contents", [])]
            doomed.extend(k for k in keys if k < stop)
            if keys and keys[-1] >= stop:
                break  # listings are in key order: nothing further is older
        return self._delete(doomed)

    def _delete(self, keys: list[str]) -> int:
        deleted = 0
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start:start + DELETE_BATCH]
            try:
                answer = self.adapter._call(
                    "delete_objects", batch[0],
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            except (ClientError, S3AccessError) as exc:
                self._report_delete_failure(str(exc))
                return deleted
            errors = answer.get("Errors", [])
            if errors:
                self._report_delete_failure(f"{errors[0].get('Code')}: {errors[0].get('Message')}")
            deleted += len(batch) - len(errors)
        return deleted

    def _report_delete_failure(self, detail: str) -> None:
        if not self._delete_denied_reported:
            self._delete_denied_reported = True
            logger.warning("cannot delete old index objects or journal records (%s): the journal "
                           "then grows; expire %s with a bucket lifecycle rule",
                           detail, self.layout.journal_root)
