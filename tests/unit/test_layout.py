"""The S3 key layout and the naming rules (DESIGN.md: a public contract)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amfs_s3.exceptions import InvalidNameError
from amfs_s3.layout import (
    MAX_S3_KEY_BYTES,
    MAX_SEGMENT_BYTES,
    EntryObject,
    Layout,
    escape_segment,
    is_within,
    unescape_segment,
    validate_entity_path,
    validate_key,
    validate_outcome_ref,
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


@pytest.mark.parametrize("key", ["", "..", ".", "k\x7f", "k\ty"])
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


# -- escaping: one name segment is one object-key segment ---------------------------

# Names as the API accepts them: printable text, including the escaped characters.
_CHARS = st.characters(blacklist_categories=("Cc", "Cs"))
_SEGMENT = st.text(_CHARS, min_size=1, max_size=12).filter(lambda s: s not in {".", ".."})
_ENTITY = st.lists(_SEGMENT.filter(lambda s: "/" not in s), min_size=1, max_size=3).map("/".join)


@given(st.text(_CHARS, max_size=30))
def test_escaping_round_trips(name: str) -> None:
    segment = escape_segment(name)
    assert "/" not in segment and "\\" not in segment
    assert unescape_segment(segment) == name


@pytest.mark.parametrize("name", ["retry-pattern", "v1.json", "ключ ✓", "a b+c=d?e#f&g"])
def test_names_without_escaped_characters_keep_their_object_keys(name: str) -> None:
    assert escape_segment(name) == name
    assert LAYOUT.version_key("svc", name, 1) == f"amfs/default/entries/svc/{name}/v1.json"


def test_the_mapping_is_the_documented_one() -> None:
    assert escape_segment("50%/a\\b") == "50%25%2Fa%5Cb"
    assert LAYOUT.version_key("svc", "a/b", 2) == "amfs/default/entries/svc/a%2Fb/v2.json"
    assert LAYOUT.outcome_key("INC/1") == "amfs/default/outcomes/INC%2F1.json"
    assert Layout("amfs/", "team\\x").root == "amfs/team%5Cx/"


@pytest.mark.parametrize("segment", ["50%", "%2f", "%41", "a/b", "a\\b", "%2"])
def test_segments_this_layout_never_writes_do_not_unescape(segment: str) -> None:
    assert unescape_segment(segment) is None


@given(_ENTITY, _SEGMENT, _ENTITY, _SEGMENT)
def test_distinct_names_never_share_an_object_key(e1: str, k1: str, e2: str, k2: str) -> None:
    first, second = LAYOUT.version_key(e1, k1, 1), LAYOUT.version_key(e2, k2, 1)
    # SeaweedFS stores '\\' as '/': compare the keys as such a provider sees them.
    seen = first.replace("\\", "/"), second.replace("\\", "/")
    assert (seen[0] == seen[1]) == ((e1, k1) == (e2, k2))


@given(_ENTITY, _SEGMENT, st.integers(min_value=1, max_value=10**9))
def test_parse_entry_key_inverts_version_key(entity: str, key: str, version: int) -> None:
    assert LAYOUT.parse_entry_key(LAYOUT.version_key(entity, key, version)) == EntryObject(
        entity, key, version
    )


@given(_SEGMENT)
def test_parse_outcome_key_inverts_outcome_key(ref: str) -> None:
    assert LAYOUT.parse_outcome_key(LAYOUT.outcome_key(ref)) == ref


def test_issue_12_names_stay_distinct() -> None:
    keys = {LAYOUT.version_key("svc\\cfg", "k", 1), LAYOUT.version_key("svc", "cfg\\k", 1),
            LAYOUT.version_key("svc/cfg", "k", 1), LAYOUT.version_key("svc", "cfg/k", 1)}
    assert len({k.replace("\\", "/") for k in keys}) == 4


def test_key_with_slash_never_aliases_a_nested_entity() -> None:
    slashed = LAYOUT.version_key("a", "b/c", 1)
    nested = LAYOUT.version_key("a/b", "c", 1)
    assert slashed != nested
    assert LAYOUT.parse_entry_key(slashed) == EntryObject("a", "b/c", 1)
    assert not nested.startswith(LAYOUT.key_dir("a", "b/c"))


@pytest.mark.parametrize(
    "check,field,name",
    [
        (validate_key, "key", "k" * (MAX_SEGMENT_BYTES + 1)),
        (validate_key, "key", "/" * 86),  # 86 x '%2F' = 258 bytes once escaped
        (validate_entity_path, "entity_path", "ok/" + "é" * 128),  # 256 bytes of UTF-8
        (validate_outcome_ref, "outcome_ref", "r" * (MAX_SEGMENT_BYTES - 4)),  # + '.json'
    ],
)
def test_segments_over_255_bytes_are_refused(check: object, field: str, name: str) -> None:
    with pytest.raises(InvalidNameError) as caught:
        check(name)  # type: ignore[operator]
    assert caught.value.field == field
    assert "255 bytes" in str(caught.value)


def test_segments_of_255_bytes_are_allowed() -> None:
    assert validate_key("k" * MAX_SEGMENT_BYTES)
    assert validate_outcome_ref("r" * (MAX_SEGMENT_BYTES - len(".json")))
    assert validate_entity_path("é" * 127 + "x")


def test_long_namespace_is_refused() -> None:
    with pytest.raises(InvalidNameError) as caught:
        Layout("amfs/", "n" * 256)
    assert caught.value.field == "namespace"
