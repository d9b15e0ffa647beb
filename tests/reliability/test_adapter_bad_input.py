"""Generated bad (and good) input through the adapter against moto over HTTP.

Every case either round-trips exactly through write + read, or is refused with a
``ValueError`` subclass whose message names the field, and a refusal writes
nothing: the bucket's listing is the same before and after.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from amfs_core.models import MemoryEntry, OutcomeRecord, OutcomeType, Provenance
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from amfs_s3 import S3Adapter
from amfs_s3.config import S3Settings
from tests.fixtures.s3 import all_keys

BOUNDED = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    # One bucket serves every example; each example compares listings itself.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large, HealthCheck.large_base_example],
)

# Anything at all, surrogates and control characters included.
ANY_CHAR = st.characters(exclude_categories=())
PLAIN_CHAR = st.characters(categories=["L", "N"], include_characters="-_.~ ")

NASTY_SEGMENTS = [
    "", ".", "..", " ", "...", "v1.json", "v0.json", "entries", "journal", "%2F", "%00",
    "a+b", "a b", "q?x=1", "h#x", "ü", "e\u0301", "\u2028", "\ufeff", "\uffff", "😀",
    "\x00", "\x1f", "\x7f", "\x85", "\t", "\n", "\ud800", "a\\b", "<&>",
]


def segments() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(PLAIN_CHAR, min_size=1, max_size=12),
        st.text(ANY_CHAR, max_size=8),
        st.sampled_from(NASTY_SEGMENTS),
        st.integers(150, 700).map(lambda n: "L" * n),  # pushes the S3 key past 1,024 bytes
    )


def entity_paths() -> st.SearchStrategy[object]:
    return st.one_of(
        st.lists(segments(), min_size=1, max_size=4).map("/".join),
        st.text(ANY_CHAR, max_size=12),  # '/' at either end, '//', anything
        st.sampled_from(["/", "a/", "/a", "a//b", "a/./b", "a/../b"]),
        st.integers(),  # not a string at all
    )


def keys() -> st.SearchStrategy[object]:
    return st.one_of(segments(), st.sampled_from(["a/b", "/", "k/"]), st.none())


def nested(depth: int) -> object:
    value: object = "leaf"
    for level in range(depth):
        value = [value] if level % 2 else {"d": value}
    return value


def json_values() -> st.SearchStrategy[object]:
    leaves = st.one_of(
        st.none(), st.booleans(), st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(ANY_CHAR, max_size=20),
    )
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(ANY_CHAR, max_size=6), children, max_size=4),
        ),
        max_leaves=25,
    )


def non_json_values() -> st.SearchStrategy[object]:
    return st.one_of(
        st.sampled_from([math.nan, math.inf, -math.inf]),
        st.sets(st.integers(), max_size=3),
        st.frozensets(st.text(max_size=3), max_size=2),
        st.binary(max_size=8),
        st.datetimes(),
        st.complex_numbers(allow_nan=False, allow_infinity=False),
        st.builds(object),
        st.lists(st.sampled_from([math.nan, b"x", {1, 2}]), min_size=1, max_size=3),
        st.dictionaries(st.text(max_size=3), st.just(math.inf), min_size=1, max_size=2),
        st.just(10 ** 5000),  # more digits than int→str conversion allows
    )


# ----------------------------------------------------------------------


def entry(entity_path: object, key: object, value: object) -> MemoryEntry:
    return MemoryEntry(
        entity_path=entity_path,  # type: ignore[arg-type]
        key=key,  # type: ignore[arg-type]
        value=value,
        provenance=Provenance(agent_id="fuzz", session_id="s", written_at=datetime.now(UTC)),
    )


def assert_identical(got: Any, expected: Any, where: str = "value") -> None:
    """Equal *and* the same JSON types: 1, 1.0 and True must not stand in for each other."""
    kinds = f"{type(got).__name__} != {type(expected).__name__}"
    assert type(got) is type(expected), f"{where}: {kinds}"
    if isinstance(expected, float):
        assert repr(got) == repr(expected), f"{where}: {got!r} != {expected!r}"
    elif isinstance(expected, dict):
        assert list(got) == list(expected), f"{where}: keys {list(got)} != {list(expected)}"
        for k in expected:
            assert_identical(got[k], expected[k], f"{where}[{k!r}]")
    elif isinstance(expected, list):
        assert len(got) == len(expected), f"{where}: length {len(got)} != {len(expected)}"
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            assert_identical(g, e, f"{where}[{i}]")
    else:
        assert got == expected, f"{where}: {got!r} != {expected!r}"


def refused_naming_a_field(exc: ValueError, fields: tuple[str, ...]) -> bool:
    message = str(exc)
    field = getattr(exc, "field", None)
    return bool(message) and (field in fields or any(f in message for f in fields))


@pytest.fixture
def adapter(s3_settings: S3Settings) -> Iterator[S3Adapter]:
    with S3Adapter.from_settings(s3_settings) as instance:
        yield instance


def write_round_trips_or_is_refused(adapter: S3Adapter, s3_client, bucket: str,  # type: ignore[no-untyped-def]
                                    entity_path: object, key: object, value: object,
                                    fields: tuple[str, ...]) -> str:
    # Journal records go out in the background: the earlier examples' must be in
    # before 'before' is taken, or they would count as this write's leftovers.
    assert adapter.drain_journal(30)
    before = all_keys(s3_client, bucket)
    try:
        candidate = entry(entity_path, key, value)
    except ValidationError as exc:  # refused by the AMFS model before the adapter
        assert refused_naming_a_field(exc, fields), str(exc)
        return "refused by the model"
    try:
        written = adapter.write(candidate)
    except ValueError as exc:
        assert refused_naming_a_field(exc, fields), f"{type(exc).__name__}: {exc}"
        assert all_keys(s3_client, bucket) == before, "a refused write left objects behind"
        return "refused by the adapter"
    assert isinstance(entity_path, str) and isinstance(key, str)
    stored = adapter.read(entity_path, key)
    assert stored is not None, f"{entity_path!r}/{key!r} was acknowledged but reads as missing"
    assert (stored.entity_path, stored.key, stored.version) == (
        entity_path, key, written.version)
    assert_identical(stored.value, value)
    pinned = adapter.read_at_version(entity_path, key, written.version)
    assert pinned is not None and pinned.model_dump() == stored.model_dump()
    return "round-tripped"


@BOUNDED
@given(entity_path=entity_paths(), key=keys())
def test_entity_paths_and_keys_round_trip_or_are_refused(
    adapter: S3Adapter, s3_client, bucket: str, entity_path: object, key: object
) -> None:
    event(write_round_trips_or_is_refused(adapter, s3_client, bucket, entity_path, key,
                                          {"name": "x"}, ("entity_path", "key")))


@BOUNDED
@given(value=json_values())
def test_json_values_round_trip_or_are_refused(
    adapter: S3Adapter, s3_client, bucket: str, value: object
) -> None:
    # Refused only for strings holding lone surrogates, which UTF-8 cannot encode.
    event(write_round_trips_or_is_refused(adapter, s3_client, bucket, "fuzz/json", "v",
                                          value, ("value",)))


@settings(BOUNDED, max_examples=40)
@given(value=non_json_values())
def test_values_that_are_not_json_are_refused(
    adapter: S3Adapter, s3_client, bucket: str, value: object
) -> None:
    got = write_round_trips_or_is_refused(adapter, s3_client, bucket, "fuzz/non-json", "v",
                                          value, ("value",))
    assert got == "refused by the adapter"


@settings(BOUNDED, max_examples=30)
@given(depth=st.integers(1, 600))
def test_deep_values_round_trip_or_are_refused(
    adapter: S3Adapter, s3_client, bucket: str, depth: int
) -> None:
    event(write_round_trips_or_is_refused(adapter, s3_client, bucket, "fuzz/deep", "v",
                                          nested(depth), ("value",)))


@settings(BOUNDED, max_examples=6)
@given(value=st.one_of(
    st.integers(500_000, 2_000_000).map(lambda n: "é" * n),
    st.integers(20_000, 100_000).map(lambda n: list(range(n))),
    st.integers(2_000, 10_000).map(lambda n: {f"k{i}": [i, str(i)] for i in range(n)}),
))
def test_huge_values_round_trip(
    adapter: S3Adapter, s3_client, bucket: str, value: object
) -> None:
    got = write_round_trips_or_is_refused(adapter, s3_client, bucket, "fuzz/huge", "v",
                                          value, ("value",))
    assert got == "round-tripped"


def test_the_strategies_reach_both_outcomes(adapter: S3Adapter, s3_client, bucket: str) -> None:
    """Guards the property tests from passing vacuously: known cases of each kind."""
    cases = [
        ("team/a", "k", {"n": [1, 2.5, None, True, "ü\u2028"]}, "round-tripped"),
        ("team/a", "k", nested(254), "round-tripped"),
        ("team/a", "k", nested(400), "refused by the adapter"),
        ("team/a", "k", math.nan, "refused by the adapter"),
        ("team/a", "k", {1, 2}, "refused by the adapter"),
        ("team/../a", "k", 1, "refused by the adapter"),
        ("team", "a/b", 1, "round-tripped"),  # a '/' in a key is stored escaped
        ("team", "a\\b%2F", 1, "round-tripped"),
        ("team", "L" * 256, 1, "refused by the adapter"),  # one segment over 255 bytes
        ("/".join(["L" * 250] * 5), "k", 1, "refused by the adapter"),  # key over 1,024
        (7, "k", 1, "refused by the model"),
    ]
    for entity_path, key, value, expected in cases:
        fields = ("entity_path", "key", "value", "entity_path/key")
        got = write_round_trips_or_is_refused(adapter, s3_client, bucket, entity_path, key,
                                              value, fields)
        assert got == expected, (entity_path, key, expected)


@pytest.mark.parametrize("value", [{1: "a"}, {None: 1}, {True: 1}, {"outer": {2.5: "x"}}],
                         ids=["int", "None", "bool", "nested float"])
def test_dict_keys_that_are_not_strings_are_refused(
    adapter: S3Adapter, s3_client, bucket: str, value: dict[Any, Any]
) -> None:
    got = write_round_trips_or_is_refused(adapter, s3_client, bucket, "svc", "k", value,
                                          ("value",))
    assert got == "refused by the adapter"


@BOUNDED
@given(outcome_ref=segments())
def test_outcome_refs_round_trip_or_are_refused(
    adapter: S3Adapter, s3_client, bucket: str, outcome_ref: str
) -> None:
    # Journal records go out in the background: the earlier examples' must be in
    # before 'before' is taken, or they would count as this write's leftovers.
    assert adapter.drain_journal(30)
    before = all_keys(s3_client, bucket)
    record = OutcomeRecord(outcome_ref=outcome_ref, outcome_type=OutcomeType.SUCCESS,
                           committed_at=datetime.now(UTC), agent_id="fuzz")
    try:
        adapter.commit_outcome(record)
    except ValueError as exc:
        assert refused_naming_a_field(exc, ("outcome_ref",)), str(exc)
        assert all_keys(s3_client, bucket) == before
        event("refused by the adapter")
        return
    event("round-tripped")
    stored = adapter.get_outcome(outcome_ref)
    assert stored is not None
    assert json.loads(stored.model_dump_json()) == json.loads(record.model_dump_json())
