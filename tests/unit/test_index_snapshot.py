"""Snapshot and lease formats and key math (amfs_s3.snapshot): pure."""

from __future__ import annotations

import gzip
import json

import pytest

from amfs_s3.exceptions import AdapterError
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

LAYOUT = Layout("amfs/", "prod")


def test_keys_follow_the_documented_layout_and_parse_back() -> None:
    assert snapshot_key(LAYOUT, 1_700_000_000_000) == (
        "amfs/prod/index/snapshot-1700000000000.json.gz")
    assert lease_key(LAYOUT, 7) == "amfs/prod/index/lease-0000000007.json"
    assert parse_snapshot_key(LAYOUT, snapshot_key(LAYOUT, 42)) == 42
    assert parse_lease_key(LAYOUT, lease_key(LAYOUT, 42)) == 42
    for other in ("amfs/prod/index/lease-7.json", "amfs/other/index/lease-0000000007.json",
                  "amfs/prod/index/snapshot-1.json.gz", "amfs/prod/journal/x.json"):
        assert parse_lease_key(LAYOUT, other) is None
        assert parse_snapshot_key(LAYOUT, other) is None


def test_a_snapshot_round_trips_names_with_any_characters() -> None:
    snapshot = IndexSnapshot(
        covers_ms=123, writer="pod-a",
        entries={("svc/api", "k"): (3, 3), ("ünï/çødé", "a b"): (1, 1), ("x", "y"): (9, 2)},
        outcomes=4,
    )
    assert decode_snapshot("k", encode_snapshot(snapshot)) == snapshot
    # Deterministic bytes: the same index makes the same object.
    assert encode_snapshot(snapshot) == encode_snapshot(snapshot)


@pytest.mark.parametrize("size", [0, 1, 9_999, 10_000, 10_001, 25_000])
def test_written_in_chunks_the_document_is_one_json_object_as_before(size: int) -> None:
    # Sizes on both sides of the 10,000-entry chunk.
    entries = {(f"e{n % 7}", f"k{n:06d}"): (1 + n % 3, 1 + n % 3) for n in range(size)}
    snapshot = IndexSnapshot(covers_ms=5, writer="w", entries=entries, outcomes=2,
                             recent_outcomes=frozenset({"r1", "r0"}), scan_after="amfs/x")
    whole = {"format": 1, "covers_ms": 5, "writer": "w", "outcomes": 2,
             "recent_outcomes": ["r0", "r1"], "scan_after": "amfs/x",
             "entries": [[e, k, c, v] for (e, k), (c, v) in sorted(entries.items())]}
    raw = gzip.decompress(encode_snapshot(snapshot))
    assert raw == json.dumps(whole, ensure_ascii=False, separators=(",", ":")).encode()
    decoded = decode_snapshot("k", encode_snapshot(snapshot))
    assert decoded == snapshot
    # One string per entity path, however many keys it has.
    assert len({id(entity) for entity, _ in decoded.entries}) == min(size, 7)


# mtime=0 and ids: gzip stamps the time, and every xdist worker must collect the same ids.
@pytest.mark.parametrize("body", [
    b"not gzip", gzip.compress(b"not json", mtime=0), gzip.compress(b'{"format": 99}', mtime=0),
    gzip.compress(b'{"format": 1, "covers_ms": 1, "writer": "w", "outcomes": 0, '
                  b'"entries": [["only-two", 1]]}', mtime=0),
    gzip.compress(b'{"format": 1, "covers_ms": 1, "writer": "w", "outcomes": 0, '
                  b'"entries": {"a": 1}}', mtime=0),
], ids=["not gzip", "not json", "unknown format", "entry of two fields", "entries not a list"])
def test_an_unreadable_snapshot_is_a_clear_error(body: bytes) -> None:
    with pytest.raises(AdapterError, match="index snapshot 'the-key' is unreadable"):
        decode_snapshot("the-key", body)


def test_a_lease_belongs_to_its_holder_until_it_expires() -> None:
    lease = Lease(term=3, holder="pod-a", expires_at_ms=1_000)
    assert decode_lease(3, encode_lease(lease)) == lease
    assert lease.held_by_other_than("pod-b", now_ms=999)
    assert not lease.held_by_other_than("pod-b", now_ms=1_000)  # expired: free to take
    assert not lease.held_by_other_than("pod-a", now_ms=999)  # its holder renews it
    with pytest.raises(AdapterError, match="lease term 3 is unreadable"):
        decode_lease(3, b"{}")


def test_a_snapshot_names_its_recent_outcomes_and_older_ones_read_without() -> None:
    snapshot = IndexSnapshot(covers_ms=5, writer="w", entries={}, outcomes=2,
                             recent_outcomes=frozenset({"run-2"}))
    assert decode_snapshot("k", encode_snapshot(snapshot)) == snapshot
    older = gzip.compress(b'{"format": 1, "covers_ms": 1, "writer": "w", "outcomes": 3, '
                          b'"entries": []}')
    assert decode_snapshot("k", older).recent_outcomes == frozenset()
