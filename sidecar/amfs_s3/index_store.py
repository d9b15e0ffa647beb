"""Reading and writing the index snapshot, the lease and the journal's tail in S3.

One listing of ``index/`` tells a sidecar both who holds the lease and which
snapshot is newest, so a sidecar that does not hold the lease pays one LIST
(and one small GET) per interval, whatever the size of the memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from botocore.exceptions import ClientError

from amfs_s3.adapter import S3Adapter
from amfs_s3.exceptions import S3AccessError
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

logger = logging.getLogger(__name__)

SNAPSHOTS_KEPT = 2
LEASES_KEPT = 2
DELETE_BATCH = 1000


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
        found: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for page in self.adapter._list(self.layout.entries_root):
            for obj in page.get("Contents", []):
                parsed = self.layout.parse_entry_key(obj["Key"])
                if parsed is None:
                    continue
                modified = obj.get("LastModified")
                modified_ms = int(modified.timestamp() * 1000) if modified is not None else 0
                found.setdefault((parsed.entity_path, parsed.key), []).append(
                    (parsed.version, modified_ms))
        return found

    def scan_outcomes(self) -> dict[str, int]:
        """Every stored outcome's ref → LastModified ms, from listings alone."""
        found: dict[str, int] = {}
        for page in self.adapter._list(self.layout.outcomes_root):
            for obj in page.get("Contents", []):
                ref = self.layout.parse_outcome_key(obj["Key"])
                if ref:
                    modified = obj.get("LastModified")
                    found[ref] = int(modified.timestamp() * 1000) if modified is not None else 0
        return found

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
                   duration_ms: int) -> Lease | None:
        """Create the next term for *holder*; None if someone else holds a live
        lease or won the race for that term."""
        if current is not None and current.held_by_other_than(holder, now_ms):
            return None
        lease = Lease(term=(current.term + 1) if current else 1, holder=holder,
                      expires_at_ms=now_ms + duration_ms)
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
