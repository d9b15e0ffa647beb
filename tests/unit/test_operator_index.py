"""The operator's indexes and the PrefixConflict rule."""

from __future__ import annotations

import random

import pytest

from amfs_operator.index import (
    DeletionPlan,
    claim_entry,
    deletion_plan,
    find_conflict,
    secret_entry,
)
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
    refused = body("team-b", "refused", "2026-01-02T00:00:00Z", prefix="amfs/shared/x")
    nested = body("team-c", "nested", "2026-01-03T00:00:00Z", prefix="amfs/shared/x/y")
    index = index_of(owner, refused, nested)
    assert find_conflict(claim(refused), index) is not None
    rival = find_conflict(claim(nested), index)
    assert rival is not None and rival.name == "owner"  # not "refused": it owns nothing


def test_a_stale_index_entry_of_the_same_memory_is_ignored() -> None:
    other = body("team-a", "other", "2026-01-01T00:00:00Z", namespace="x")
    old_self = body("team-b", "me", "2026-01-02T00:00:00Z", namespace="y")
    new_self = body("team-b", "me", "2026-01-02T00:00:00Z", namespace="x")
    assert find_conflict(claim(new_self), index_of(other, old_self)) is not None


@pytest.mark.parametrize("order", ["parent first", "child first"])
def test_nested_roots_in_one_namespace_refuse_the_later(order: str) -> None:
    times = ("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z")
    parent_at, child_at = times if order == "parent first" else times[::-1]
    parent = body("team-a", "parent", parent_at, namespace="team")
    child = body("team-a", "child", child_at, prefix="amfs/team/", namespace="sub")
    index = index_of(parent, child)
    later, earlier = (child, parent) if order == "parent first" else (parent, child)
    rival = find_conflict(claim(later), index)
    assert rival is not None and rival.key == claim(earlier).key
    assert find_conflict(claim(earlier), index) is None


def test_equal_roots_in_one_namespace_refuse_the_later() -> None:
    one = body("team-a", "one", namespace="shared")
    two = body("team-a", "two", "2026-01-05T00:00:00Z", namespace="shared")
    rival = find_conflict(claim(two), index_of(one, two))
    assert rival is not None and rival.name == "one"


@pytest.mark.parametrize("alias", [
    "http://localhost:9000", "http://127.0.0.1:09000", "http://127.0.0.1:9000/.",
    "http://[::ffff:127.0.0.1]:9000", "http://0x7f.1:9000",
])
def test_aliased_endpoints_conflict_across_namespaces(alias: str) -> None:
    owner = body("team-a", "owner", endpointURL="http://127.0.0.1:9000", namespace="x")
    thief = body("team-b", "thief", "2026-01-02T00:00:00Z", endpointURL=alias, namespace="x")
    rival = find_conflict(claim(thief), index_of(owner, thief))
    assert rival is not None and rival.name == "owner"


def test_aws_spellings_conflict() -> None:
    owner = body("team-a", "owner", namespace="x", region="eu-west-1")
    for n, url in enumerate(["https://s3.amazonaws.com", "https://s3.eu-west-1.amazonaws.com",
                             "https://bkt.s3.eu-west-1.amazonaws.com"]):
        thief = body("team-b", f"t{n}", "2026-01-02T00:00:00Z", endpointURL=url, namespace="x")
        assert find_conflict(claim(thief), index_of(owner, thief)) is not None, url


def test_settlement_follows_links_through_other_places() -> None:
    # "via" reaches bucket "victim" only through its virtual-host reading: the owner's
    # verdict and the thief's must come from one settlement.
    owner = body("a", "owner", "2026-01-01T00:00:00Z", bucket="victim",
                 endpointURL="http://127.0.0.1:9000", namespace="x")
    thief = body("b", "thief", "2026-01-02T00:00:00Z", bucket="amfs", prefix="",
                 endpointURL="http://victim.localhost:9000", namespace="x")
    index = index_of(owner, thief)
    assert find_conflict(claim(owner), index) is None
    rival = find_conflict(claim(thief), index)
    assert rival is not None and rival.name == "owner"


# ---- deletion plans ----------------------------------------------------------------------

def test_deletion_keeps_roots_of_bound_memories_nested_inside() -> None:
    parent = body("team-a", "parent", namespace="team")
    child = body("team-a", "child", "2026-01-02T00:00:00Z", prefix="amfs/team/",
                 namespace="sub")
    index = index_of(parent, child)
    # Refused and never bound: it owns nothing, the whole root is the parent's.
    assert deletion_plan(claim(parent), index) == DeletionPlan()
    # Both bound before claims saw nesting (an upgrade): the child is refused now, but
    # its sidecars may still hold data under its root.
    parent["status"] = {"configMapName": "parent-amfs"}
    child["status"] = {"configMapName": "child-amfs"}
    index = index_of(parent, child)
    assert find_conflict(claim(child), index) is not None
    plan = deletion_plan(claim(parent), index)
    assert plan.owner is None and plan.keep == ("amfs/team/sub/",)
    assert [k.name for k in plan.keepers] == ["child"]


def test_deletion_of_a_root_inside_another_removes_nothing() -> None:
    parent = body("team-a", "parent", namespace="team")
    child = body("team-a", "child", "2026-01-02T00:00:00Z", prefix="amfs/team/",
                 namespace="sub")
    child["status"] = {"configMapName": "child-amfs"}
    parent["status"] = {"configMapName": "parent-amfs"}
    index = index_of(parent, child)
    plan = deletion_plan(claim(child), index)
    assert plan.owner is not None and plan.owner.name == "parent"


def test_deletion_through_an_alias_removes_nothing_of_the_owner() -> None:
    owner = body("a", "owner", bucket="victim", endpointURL="http://127.0.0.1:9000",
                 namespace="x")
    owner["status"] = {"configMapName": "owner-amfs"}
    thief = body("b", "thief", "2026-01-02T00:00:00Z", endpointURL="http://localhost:9000",
                 bucket="victim", namespace="x", deletionPolicy="Delete")
    plan = deletion_plan(claim(thief), index_of(owner, thief))
    assert plan.owner is not None and plan.owner.name == "owner"


def test_deletion_of_an_unrelated_memory_is_its_whole_root() -> None:
    one = body("a", "one", namespace="x")
    two = body("b", "two", namespace="y")
    assert deletion_plan(claim(one), index_of(one, two)) == DeletionPlan()


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


def test_settlement_agrees_with_pairwise_overlap() -> None:
    """The indexed search finds exactly the rivals a pairwise comparison finds."""
    rng = random.Random(11)
    segments = ["a", "b", "ab"]
    bodies = []
    for i in range(120):
        prefix = "/".join(rng.choice(segments) for _ in range(rng.randint(0, 2)))
        bodies.append(body(f"ns{i % 7}", f"m{i}", f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z",
                           prefix=prefix, namespace=rng.choice(segments),
                           endpointURL=rng.choice(["http://127.0.0.1:9000",
                                                   "http://localhost:9000",
                                                   "http://a.localhost:9000"])))
    index = index_of(*bodies)
    accepted: list[Claim] = []
    for item in bodies:  # already in order of precedence (creation time)
        mine = claim(item)
        expected = next((other for other in accepted if other.overlaps(mine)), None)
        found = find_conflict(mine, index)
        assert (found is None) == (expected is None), mine
        if found is None:
            accepted.append(mine)
        else:
            assert found.overlaps(mine) and found in accepted
