"""The S3 key layout and the naming rules (DESIGN.md: a public contract)."""

from __future__ import annotations

import pytest

from amfs_s3.exceptions import InvalidNameError
from amfs_s3.layout import (
    MAX_S3_KEY_BYTES,
    EntryObject,
    Layout,
    is_within,
    validate_entity_path,
    validate_key,
)

LAYOUT = Layout("amfs/", "default")


def test_version_key_matches_the_documented_example() -> None:
    assert (
        LAYOUT.version_key("checkout-service", "retry-pattern", 2)
        == "amfs/default/entries/checkout-service/retry-pattern/v2.json"
    )


def test_outcome_and_journal_keys() -> None:
    assert LAYOUT.outcome_key("INC-1") == "amfs/default/outcomes/INC-1.json"
    assert (
        LAYOUT.journal_key(1_700_000_000_123, "pod-a-1", 7)
        == "amfs/default/journal/1700000000123-pod-a-1-000007.json"
    )


def test_prefix_gets_a_trailing_slash() -> None:
    assert Layout("mem", "ns").root == "mem/ns/"


@pytest.mark.parametrize("name,version", [("v1.json", 1), ("v10.json", 10), ("v2.json", 2)])
def test_version_files_parse_numerically(name: str, version: int) -> None:
    assert Layout.parse_version_file(name) == version


@pytest.mark.parametrize("name", ["v0.json", "v01.json", "v1.json.tmp", "x1.json", "v.json", "v1"])
def test_non_version_files_are_ignored(name: str) -> None:
    assert Layout.parse_version_file(name) is None


def test_versions_sort_numerically_not_lexically() -> None:
    names = ["v1.json", "v10.json", "v2.json", "v9.json"]
    assert sorted(names, key=lambda n: Layout.parse_version_file(n) or 0)[-1] == "v10.json"


def test_nested_entity_and_key_never_alias() -> None:
    nested = LAYOUT.version_key("a/b", "c", 1)
    parent = LAYOUT.version_key("a", "b", 1)
    assert nested != parent
    assert LAYOUT.parse_entry_key(nested) == EntryObject("a/b", "c", 1)
    assert LAYOUT.parse_entry_key(parent) == EntryObject("a", "b", 1)
    # The key directory of (a, b) only holds its own versions directly.
    assert nested.startswith(LAYOUT.key_dir("a", "b"))
    assert nested[len(LAYOUT.key_dir("a", "b")) :].count("/") == 1


def test_a_key_that_looks_like_a_version_file_is_still_a_key() -> None:
    object_key = LAYOUT.version_key("a", "v1.json", 3)
    assert LAYOUT.parse_entry_key(object_key) == EntryObject("a", "v1.json", 3)


@pytest.mark.parametrize(
    "entity_path,fragment",
    [
        ("", "is empty"),
        ("/a", "empty segment"),
        ("a/", "empty segment"),
        ("a//b", "empty segment"),
        ("a/../b", "'..'"),
        (".", "'.'"),
        ("a/\x00b", "control character"),
        ("a\nb", "control character"),
    ],
)
def test_bad_entity_paths_name_the_field_and_rule(entity_path: str, fragment: str) -> None:
    with pytest.raises(InvalidNameError) as caught:
        validate_entity_path(entity_path)
    message = str(caught.value)
    assert message.startswith("entity_path ")
    assert fragment in message
    assert "segments may not be" in message
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("key", ["a/b", "", "..", ".", "k\x7f", "k\ty"])
def test_bad_keys_are_refused(key: str) -> None:
    with pytest.raises(InvalidNameError) as caught:
        validate_key(key)
    assert caught.value.field == "key"


def test_unicode_names_are_allowed() -> None:
    assert validate_entity_path("服务/チーム") == "服务/チーム"
    assert validate_key("ключ ✓") == "ключ ✓"


def test_whole_key_length_is_bounded() -> None:
    long_path = "/".join(["x" * 200] * 5)
    with pytest.raises(InvalidNameError) as caught:
        LAYOUT.check_names(long_path, "k")
    assert str(MAX_S3_KEY_BYTES) in str(caught.value)


def test_namespace_must_be_one_segment() -> None:
    with pytest.raises(InvalidNameError) as caught:
        Layout("amfs/", "a/b")
    assert caught.value.field == "namespace"


def test_journal_keys_parse_back() -> None:
    key = LAYOUT.journal_key(42, "host-1-abc", 999_999)
    name = LAYOUT.parse_journal_key(key)
    assert name is not None
    assert (name.ms, name.writer, name.seq) == (42, "host-1-abc", 999_999)
    assert LAYOUT.parse_journal_key("amfs/default/journal/garbage.json") is None


def test_journal_start_after_sorts_before_records_of_that_millisecond() -> None:
    start = LAYOUT.journal_start_after(1000)
    assert start < LAYOUT.journal_key(1000, "w", 0)
    assert start > LAYOUT.journal_key(999, "w", 999_999)


@pytest.mark.parametrize(
    "path,scope,inside",
    [("a/b/c", "a/b", True), ("a/b", "a/b", True), ("a/bc", "a/b", False), ("x", "*", True),
     ("x", None, True), ("a", "a/b", False)],
)
def test_is_within_respects_segment_boundaries(path: str, scope: str | None, inside: bool) -> None:
    assert is_within(path, scope) is inside
