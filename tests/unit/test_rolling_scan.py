"""The rolling scan's key math (amfs_s3.index_store), the index's slice-scoped
replacement (amfs_sidecar.index) and the scan position in snapshots and leases:
pure, no I/O."""

from __future__ import annotations

import gzip
import json

from amfs_s3.index_store import entry_slice_cut, open_folder
from amfs_s3.layout import Layout
from amfs_s3.snapshot import (
    IndexSnapshot,
    Lease,
    decode_lease,
    decode_snapshot,
    encode_lease,
    encode_snapshot,
)
from amfs_sidecar.index import EntryIndex

LAYOUT = Layout()
ROOT = LAYOUT.entries_root


def keys(*names: tuple[str, str, int]) -> list[str]:
    """The object keys of (entity, key, version), in listing order."""
    return sorted(LAYOUT.version_key(entity, key, version) for entity, key, version in names)


def test_a_slice_ends_before_the_folder_of_the_key_the_listing_stopped_in() -> None:
    listed = keys(("svc", "a", 1), ("svc", "a", 2), ("svc", "b", 1), ("svc", "c", 1),
                  ("svc", "c", 2))
    # svc/c may have more versions beyond the page: its two are listed again next time.
    assert open_folder(ROOT, listed) == LAYOUT.key_dir("svc", "c")
    assert entry_slice_cut(ROOT, listed) == 3
    assert entry_slice_cut(ROOT, []) == 0


def test_a_listing_inside_one_keys_folder_keeps_nothing() -> None:
    listed = keys(("svc", "big", 1), ("svc", "big", 2), ("svc", "big", 3))
    assert entry_slice_cut(ROOT, listed) == 0  # that folder is then listed to its end
    assert open_folder(ROOT, listed) == LAYOUT.key_dir("svc", "big")


def test_a_keys_versions_that_sort_around_a_folder_below_it_stay_in_one_slice() -> None:
    """Entity t/k key v1.x sorts between t/k's v1.json and v10.json: a slice that
    stopped in it must not end there, or t/k's versions would straddle the end."""
    listed = sorted([LAYOUT.version_key("t", "k", 1), LAYOUT.version_key("t/k", "v1.x", 1)])
    assert listed[0].endswith("t/k/v1.json") and listed[1].endswith("t/k/v1.x/v1.json")
    assert LAYOUT.version_key("t", "k", 10) > listed[1]  # still to come, beyond the page
    assert open_folder(ROOT, listed) == LAYOUT.key_dir("t", "k")
    assert entry_slice_cut(ROOT, listed) == 0
    before = [LAYOUT.version_key("s", "k", 1), *listed]
    assert entry_slice_cut(ROOT, before) == 1


def test_a_folder_named_like_a_version_coarsens_nothing_when_its_parent_has_none() -> None:
    # Entity bench/e001 (no key "e001" of entity bench exists) with a key "v2-migration".
    listed = keys(("bench/e001", "k1", 1), ("bench/e001", "v2-migration", 1))
    assert open_folder(ROOT, listed) == LAYOUT.key_dir("bench/e001", "v2-migration")
    assert entry_slice_cut(ROOT, listed) == 1


def test_an_object_in_no_keys_folder_ends_a_slice_anywhere() -> None:
    stray = [f"{ROOT}README.txt", f"{ROOT}svc/notes.txt"]
    assert open_folder(ROOT, stray) is None
    assert entry_slice_cut(ROOT, stray) == 2


def test_the_cut_follows_the_providers_order_not_the_keys_bytes() -> None:
    """SeaweedFS lists folder by folder: t/a/b/ before t/a%2Fb/, though '%' < '/'."""
    seaweedfs_order = [LAYOUT.version_key("t/a", "b", 1), LAYOUT.version_key("t", "a/b", 1)]
    assert seaweedfs_order[0] > seaweedfs_order[1]
    assert open_folder(ROOT, seaweedfs_order) == LAYOUT.key_dir("t", "a/b")
    assert entry_slice_cut(ROOT, seaweedfs_order) == 1


def test_replace_slice_touches_only_the_names_it_lists() -> None:
    index = EntryIndex()
    for entity, key, version in (("a", "k", 2), ("b", "k", 1), ("b", "gone", 3), ("c", "k", 1)):
        index.observe(entity, key, version)
    mark = index.mark()
    index.observe("b", "fresh", 1)  # written while the slice was listed
    newer = index.replace_slice({("b", "k"): [1, 2], ("b", "new"): [1]}, scan_pass=1,
                                since=mark)
    assert sorted(newer) == [("b", "k", 2), ("b", "new", 1)]
    assert index.current("b", "gone") == 3  # not listed by this slice: maybe by another
    assert (index.current("a", "k"), index.current("c", "k")) == (2, 1)
    assert index.count("entries") == 6
    assert index.count("versions") == 2 + 2 + 3 + 1 + 1 + 1


def test_a_whole_pass_forgets_the_names_it_never_listed() -> None:
    index = EntryIndex()
    for entity, key, version in (("a", "k", 2), ("b", "gone", 3)):
        index.observe(entity, key, version)
    began = index.mark()
    index.replace_slice({("a", "k"): [1, 2]}, scan_pass=7, since=began)
    index.observe("c", "fresh", 1)  # written during the pass, after its slice
    assert index.drop_unlisted(7, since=began) == 1
    assert [name[:2] for name in index.names()] == [("a", "k"), ("c", "fresh")]
    assert index.count("versions") == 3


def test_replace_slice_leaves_a_young_version_to_the_journal() -> None:
    index = EntryIndex()
    index.observe("a", "k", 1)
    newer = index.replace_slice({("a", "k"): [1, 2]}, scan_pass=1, since=index.mark(),
                                unsettled={("a", "k"): [2]})
    assert newer == []
    assert (index.current("a", "k"), index.count("versions")) == (1, 1)


def test_the_scan_position_round_trips_and_older_documents_read_without_it() -> None:
    position = LAYOUT.version_key("svc", "k", 3)
    snapshot = IndexSnapshot(covers_ms=5, writer="w", entries={("svc", "k"): (3, 3)},
                             outcomes=0, scan_after=position)
    assert decode_snapshot("s", encode_snapshot(snapshot)).scan_after == position
    lease = Lease(term=2, holder="w", expires_at_ms=9, scan_after=position)
    assert decode_lease(2, encode_lease(lease)) == lease
    old_lease = json.dumps({"term": 2, "holder": "w", "expires_at_ms": 9}).encode()
    assert decode_lease(2, old_lease).scan_after is None
    old = IndexSnapshot(covers_ms=5, writer="w", entries={}, outcomes=0)
    doc = json.loads(gzip.decompress(encode_snapshot(old)))
    del doc["scan_after"]
    body = gzip.compress(json.dumps(doc).encode())
    assert decode_snapshot("s", body).scan_after is None
