"""What the operator indexes (kopf keeps the indexes; these functions are pure).

- claims: (service, bucket) of the canonical storage identity → the storage claims of
  every valid memory, so a memory can be refused when its root overlaps another's
  (``PrefixConflict``) and a deletion can leave other memories' roots alone;
- source Secrets: (namespace, Secret name) → the memories that copy it, so a
  rotated Secret reaches its copies within seconds.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from amfs_operator.exceptions import SpecError
from amfs_operator.spec import Claim, parse_memory

ClaimIndex = Mapping[tuple[str, str], Iterable[Claim]]
SecretIndex = Mapping[tuple[str, str], Iterable[str]]


def claim_entry(body: Mapping[str, Any]) -> dict[tuple[str, str], Claim]:
    """A memory's entries in the claim index, one per (service, bucket) it may reach;
    an invalid spec claims nothing."""
    try:
        claim = parse_memory(body).claim
    except SpecError:
        return {}
    return {key: claim for key in claim.index_keys}


def secret_entry(body: Mapping[str, Any]) -> dict[tuple[str, str], str]:
    """A memory's entry in the source-Secret index (none without a secretRef)."""
    meta = body.get("metadata") or {}
    ref = ((body.get("spec") or {}).get("credentials") or {}).get("secretRef") or {}
    name = ref.get("name")
    if not isinstance(name, str) or not name:
        return {}
    return {(meta.get("namespace", ""), name): meta["name"]}


def find_conflict(claim: Claim, index: ClaimIndex) -> Claim | None:
    """The claim that *claim* loses to, or ``None`` if *claim* may proceed.

    Claims are settled in order — memories already bound to their location first
    (an incumbent is never displaced by a newcomer), then the oldest, then by name
    (creation times have one-second resolution): one is accepted unless it overlaps
    an already accepted claim, in its own Kubernetes namespace or another. A refused
    claim owns nothing, so it blocks no one. Every memory settles the same set (all
    claims linked to it through shared places), so two never both win one root.
    """
    return _settle(_linked(claim, index), until=claim).get(claim.key)


def _settle(
    claims: list[Claim], *, until: Claim | None = None
) -> dict[tuple[str, str], Claim | None]:
    """Each claim's rival (``None``: accepted), in order of precedence; claims after
    *until* cannot change its verdict and are left unsettled."""
    accepted = _Owners()
    rivals: dict[tuple[str, str], Claim | None] = {}
    for candidate in sorted(claims, key=_precedence):
        rival = accepted.rival(candidate)
        rivals[candidate.key] = rival
        if candidate is until:
            break
        if rival is None:
            accepted.add(candidate)
    return rivals


class _Owners:
    """Accepted claims by (service, bucket), with their key prefixes kept sorted: an
    overlap is an accepted prefix that starts *prefix* (one of its '/'-prefixes) or
    that *prefix* starts (the first one at or after it), found without a full scan."""

    def __init__(self) -> None:
        self._owner: dict[tuple[str, str], dict[str, Claim]] = {}
        self._sorted: dict[tuple[str, str], list[str]] = {}

    def add(self, claim: Claim) -> None:
        for service, bucket, prefix in claim.locations:
            owners = self._owner.setdefault((service, bucket), {})
            if prefix not in owners:
                owners[prefix] = claim
                bisect.insort(self._sorted.setdefault((service, bucket), []), prefix)

    def rival(self, claim: Claim) -> Claim | None:
        for service, bucket, prefix in sorted(claim.locations):
            owners = self._owner.get((service, bucket))
            if not owners:
                continue
            for end in range(len(prefix)):  # accepted roots end in '/', so cut at one
                if prefix[end] == "/" and prefix[: end + 1] in owners:
                    return owners[prefix[: end + 1]]
            ordered = self._sorted[(service, bucket)]
            at = bisect.bisect_left(ordered, prefix)
            if at < len(ordered) and ordered[at].startswith(prefix):
                return owners[ordered[at]]
        return None


@dataclass(frozen=True)
class DeletionPlan:
    """What ``deletionPolicy: Delete`` may remove: the memory's root minus ``keep``.

    ``owner`` is set when another live memory claims the whole root: nothing is deleted.
    """

    owner: Claim | None = None
    keep: tuple[str, ...] = ()  # key prefixes under the root that others claim
    keepers: tuple[Claim, ...] = ()


def deletion_plan(claim: Claim, index: ClaimIndex) -> DeletionPlan:
    """The memory's own root minus every root another live memory claims.

    Another memory claims its root if it won its place (it is accepted) or was ever
    bound to it (its sidecars may hold the data, even if it is refused now, e.g. after
    an upgrade that recognises more aliases).
    """
    linked = _linked(claim, index)
    rivals = _settle(linked)
    rival = rivals.get(claim.key)
    if rival is not None:
        return DeletionPlan(owner=rival)
    keep: set[str] = set()
    keepers = []
    for other in linked:
        if other is claim or not (other.bound or rivals.get(other.key) is None):
            continue
        prefixes = claim.claimed_by(other)
        if any(claim.root.startswith(prefix) for prefix in prefixes):
            return DeletionPlan(owner=other)
        if prefixes:
            keep |= prefixes
            keepers.append(other)
    return DeletionPlan(keep=tuple(sorted(keep)), keepers=tuple(keepers))


def _linked(claim: Claim, index: ClaimIndex) -> list[Claim]:
    """*claim* and every claim reachable from it through shared (service, bucket) keys
    (a stale entry of the same memory is replaced by *claim*)."""
    found: dict[tuple[str, str], Claim] = {claim.key: claim}
    pending = list(claim.index_keys)
    seen: set[tuple[str, str]] = set()
    while pending:
        key = pending.pop()
        if key in seen:
            continue
        seen.add(key)
        for other in index.get(key, ()):
            if other.key not in found:
                found[other.key] = other
                pending.extend(other.index_keys)
    return list(found.values())


def _precedence(claim: Claim) -> tuple[bool, str, str, str]:
    return (not claim.bound, claim.created, claim.namespace, claim.name)
