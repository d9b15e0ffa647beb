"""The operator's indexes and the PrefixConflict rule."""

from __future__ import annotations

from amfs_operator.index import claim_entry, find_conflict, secret_entry
from amfs_operator.spec import Claim


def body(ns: str, name: str, created: str = "2026-01-01T00:00:00Z", **spec: object) -> dict:
    return {"metadata": {"name": name, "namespace": ns, "creationTimestamp": created},
            "spec": {"bucket": "bkt", **spec}}


def index_of(*bodies: dict) -> dict[tuple[str, str], list[Claim]]:
    index: dict[tuple[str, str], list[Claim]] = {}
    for item in bodies:
        for key, claim in claim_entry(item).items():
            index.setdefault(key, []).append(claim)
    return index


def claim(item: dict) -> Claim:
    return next(iter(claim_entry(item).values()))


def test_invalid_spec_claims_nothing() -> None:
    assert claim_entry(body("a", "m", bucket="NO")) == {}


def test_secret_index_entry() -> None:
    item = body("a", "m", credentials={"secretRef": {"name": "s3"}})
    assert secret_entry(item) == {("a", "s3"): "m"}
    assert secret_entry(body("a", "m")) == {}


def test_older_claim_wins_across_namespaces() -> None:
    old = body("team-a", "one", "2026-01-01T00:00:00Z", namespace="shared")
    new = body("team-b", "two", "2026-01-02T00:00:00Z", namespace="shared")
    nested = body("team-b", "three", "2026-01-03T00:00:00Z", prefix="amfs/shared/x")
    index = index_of(old, new, nested)
    assert find_conflict(claim(old), index) is None
    rival = find_conflict(claim(new), index)
    assert rival is not None and (rival.namespace, rival.name) == ("team-a", "one")
    rival = find_conflict(claim(nested), index)
    assert rival is not None and rival.name == "one"


def test_a_refused_claim_blocks_no_one() -> None:
    owner = body("team-a", "owner", "2026-01-01T00:00:00Z", namespace="shared")
    refused = body("team-b", "refused", "2026-01-02T00:00:00Z", namespace="shared")
    sibling = body("team-a", "sibling", "2026-01-03T00:00:00Z", prefix="amfs/shared/mine")
    index = index_of(owner, refused, sibling)
    assert find_conflict(claim(refused), index) is not None
    assert find_conflict(claim(sibling), index) is None


def test_a_stale_index_entry_of_the_same_memory_is_ignored() -> None:
    other = body("team-a", "other", "2026-01-01T00:00:00Z", namespace="x")
    old_self = body("team-b", "me", "2026-01-02T00:00:00Z", namespace="y")
    new_self = body("team-b", "me", "2026-01-02T00:00:00Z", namespace="x")
    assert find_conflict(claim(new_self), index_of(other, old_self)) is not None


def test_same_namespace_overlap_is_allowed() -> None:
    one = body("team-a", "one", namespace="shared")
    two = body("team-a", "two", "2026-01-05T00:00:00Z", namespace="shared")
    assert find_conflict(claim(two), index_of(one, two)) is None


def test_a_bound_memory_keeps_its_claim_against_an_older_newcomer() -> None:
    incumbent = body("zzz", "m", "2026-01-02T00:00:00Z", namespace="s")
    incumbent["status"] = {"configMapName": "m-amfs"}
    older = body("aaa", "m", "2026-01-01T00:00:00Z", namespace="s")
    index = index_of(incumbent, older)
    assert find_conflict(claim(incumbent), index) is None
    assert find_conflict(claim(older), index) is not None


def test_tie_on_creation_time_is_broken_by_name() -> None:
    a = body("aaa", "m", namespace="s")
    b = body("bbb", "m", namespace="s")
    index = index_of(a, b)
    assert find_conflict(claim(a), index) is None
    assert find_conflict(claim(b), index) is not None


def test_different_endpoint_or_prefix_is_no_conflict() -> None:
    a = body("a", "m", namespace="s")
    b = body("b", "m", "2026-02-01T00:00:00Z", namespace="s", endpointURL="http://minio:9000")
    c = body("c", "m", "2026-02-01T00:00:00Z", namespace="s2")
    index = index_of(a, b, c)
    assert find_conflict(claim(b), index) is None
    assert find_conflict(claim(c), index) is None
