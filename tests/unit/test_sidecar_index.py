"""The sidecar's index and byte-bounded LRU cache (pure, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from amfs_core.models import MemoryEntry, Provenance

from amfs_sidecar.index import EntryIndex, ValueCache, encode_entry


def entry(entity: str, key: str, version: int = 1, value: object = "v") -> MemoryEntry:
    return MemoryEntry(entity_path=entity, key=key, version=version, value=value,
                       provenance=Provenance(agent_id="a", session_id="s",
                                             written_at=datetime(2025, 1, 1, tzinfo=UTC)))


def test_observe_moves_only_forward_and_counts() -> None:
    index = EntryIndex()
    assert index.current("a", "k") == 0
    assert index.observe("a", "k", 1) is True
    assert index.observe("a", "k", 3) is True
    assert index.observe("a", "k", 2) is False  # an older version seen late changes nothing
    assert index.observe("a", "k", 3) is False
    assert index.current("a", "k") == 3
    index.observe("a/b", "k", 1)
    # v3 means v1..v3 exist: versions are contiguous.
    assert (index.count("entries"), index.count("versions")) == (2, 4)
    assert index.entity_count() == 2
    with pytest.raises(ValueError, match="unknown object kind"):
        index.count("bananas")


def test_names_exact_subtree_and_all() -> None:
    index = EntryIndex()
    for entity in ("a", "a/b", "ab", "c"):
        index.observe(entity, "k", 1)
    assert index.names("a") == [("a", "k", 1)]
    assert index.names("a", subtree=True) == [("a", "k", 1), ("a/b", "k", 1)]
    assert [n[0] for n in index.names(None)] == ["a", "a/b", "ab", "c"]
    assert index.names("*") == index.names(None)


def test_replace_adopts_a_scan_without_undoing_newer_local_changes() -> None:
    index = EntryIndex()
    index.observe("a", "k", 1)
    index.observe("gone", "k", 1)
    mark = index.mark()
    # While the scan ran: a local write of a/k v2 and a brand-new key.
    index.observe("a", "k", 2)
    index.observe("fresh", "k", 1)
    newer = index.replace({("a", "k"): [1], ("b", "k"): [1, 2, 3]}, since=mark)
    assert newer == [("b", "k", 3)]
    assert index.current("a", "k") == 2  # not rolled back to the scan's v1
    assert index.current("fresh", "k") == 1  # written after the scan started: kept
    assert index.current("gone", "k") == 0  # untouched and absent from the scan: dropped
    assert index.count("versions") == 2 + 3 + 1


def test_every_key_of_an_entity_shares_one_entity_string() -> None:
    index = EntryIndex()
    # Built at run time, as names parsed from a listing or a snapshot are: equal, not one.
    entities = ["".join(["team", "/", "a"]) for _ in range(3)]
    assert entities[0] is not entities[1]
    index.observe(entities[0], "k1", 1)
    index.adopt_slice({(entities[1], "k2"): (1, 1)}, scan_pass=1, since=index.mark())
    fresh = ["".join(["team", "/", "a"]) for _ in range(2)]
    index.adopt({(fresh[0], "k3"): (2, 2), (fresh[1], "k2"): (1, 1)}, since=0)
    stored = [name for name, _, _ in index.names()]
    assert stored == ["team/a"] * 3 and all(entity is stored[0] for entity in stored)


def test_adopt_reports_what_is_newer_unless_told_not_to() -> None:
    view = {("a", "k"): (2, 2), ("b", "k"): (1, 1)}
    index = EntryIndex()
    index.observe("a", "k", 2)
    assert index.adopt(view, since=index.mark()) == [("b", "k", 1)]
    quiet = EntryIndex()
    assert quiet.adopt(view, since=quiet.mark(), report=False) == []
    assert (quiet.current("a", "k"), quiet.current("b", "k")) == (2, 1)  # adopted all the same


def test_counts_are_every_names_version_and_versions() -> None:
    index = EntryIndex()
    index.observe("a", "k", 3)
    index.observe("b", "k", 1)
    index.adopt_slice({("c", "k"): (4, 2)}, scan_pass=1, since=index.mark())
    counts = index.counts()
    assert counts == {("a", "k"): (3, 3), ("b", "k"): (1, 1), ("c", "k"): (4, 2)}
    index.observe("a", "k", 4)
    assert counts[("a", "k")] == (3, 3)  # a copy: the index moves on without it


def test_cache_serves_exact_versions_in_lru_order_within_its_byte_bound() -> None:
    one = entry("a", "k1")
    size = len(encode_entry(one))
    cache = ValueCache(max_bytes=size * 2 + 10)
    cache.put(one)
    cache.put(entry("a", "k2"))
    assert cache.get("a", "k1", 1) is not None  # k1 is now the most recently used
    assert cache.get("a", "k1", 2) is None  # a different version is a miss
    cache.put(entry("a", "k3"))
    assert cache.peek("a", "k2") is None  # least recently used, evicted
    assert cache.peek("a", "k1") is not None
    assert cache.stats()["evictions"] == 1
    assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 1
    assert cache.bytes <= cache.max_bytes


def test_cache_keeps_the_newest_version_and_skips_oversized_values() -> None:
    cache = ValueCache(max_bytes=2000)
    cache.put(entry("a", "k", 2, "new"))
    kept = cache.put(entry("a", "k", 1, "old"))
    assert kept.entry.version == 2
    big = entry("a", "big", 1, "x" * 5000)
    assert cache.put(big).entry is big  # returned to the caller, not cached
    assert cache.peek("a", "big") is None
    assert len(cache) == 1
    with pytest.raises(ValueError, match="must be >= 0"):
        ValueCache(-1)


def test_versions_are_counted_exactly_whatever_order_they_arrive_in() -> None:
    index = EntryIndex()
    index.observe("svc", "k", 1)
    index.observe("svc", "k", 2)
    index.observe("svc", "k", 5)  # our own write, after another pod's 3 and 4
    index.observe("svc", "k", 3)  # which arrive through the journal later
    index.observe("svc", "k", 4)
    assert (index.current("svc", "k"), index.count("versions")) == (5, 5)
    index.observe("other", "k", 2)  # first seen at v2: v1 exists too
    assert index.count("versions") == 7


def test_outcomes_added_during_a_listing_are_counted_once() -> None:
    index = EntryIndex()
    mark = index.mark()
    index.add_outcome("seen-by-listing")
    index.add_outcome("after-listing")
    index.add_outcome("after-listing")  # the same record again
    index.set_outcomes(2, listed={"old", "seen-by-listing"}, since=mark)
    assert index.count("outcomes") == 3


def test_a_scan_leaves_unsettled_versions_to_the_journal() -> None:
    index = EntryIndex()
    index.observe("known", "k", 2)  # v3 still young; the journal brought v2
    index.observe("journalled", "k", 1)  # its only listed version young, already known
    mark = index.mark()
    newer = index.replace(
        {("known", "k"): [1, 2, 3], ("journalled", "k"): [1], ("brand-new", "k"): [1],
         ("old-news", "k"): [1, 2]},
        since=mark,
        unsettled={("known", "k"): [3], ("journalled", "k"): [1], ("brand-new", "k"): [1],
                   ("old-news", "k"): [2]},
    )
    # Only settled versions the index did not know are announced.
    assert newer == [("old-news", "k", 1)]
    assert index.current("known", "k") == 2  # v3 is the journal's to deliver
    assert index.current("journalled", "k") == 1
    assert index.current("brand-new", "k") == 0
    assert index.count("versions") == 2 + 1 + 1
    # When the journal delivers them, they count as usual.
    assert index.observe("known", "k", 3) and index.observe("brand-new", "k", 1)
    assert index.count("versions") == 3 + 1 + 1 + 1


def test_an_outcome_seeded_as_counted_is_not_counted_again() -> None:
    index = EntryIndex()
    index.set_outcomes(1, listed={"listed-recently"}, since=index.mark())
    index.seed_outcomes({"listed-recently"})
    index.add_outcome("listed-recently")  # its commit answered after the listing
    assert index.count("outcomes") == 1
