"""What the operator indexes (kopf keeps the indexes; these functions are pure).

- claims: (endpoint, bucket) → the storage claims of every valid memory, so a memory
  can be refused when it overlaps another tenant's data (``PrefixConflict``);
- source Secrets: (namespace, Secret name) → the memories that copy it, so a
  rotated Secret reaches its copies within seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from amfs_operator.exceptions import SpecError
from amfs_operator.spec import Claim, parse_memory

ClaimIndex = Mapping[tuple[str, str], Iterable[Claim]]
SecretIndex = Mapping[tuple[str, str], Iterable[str]]


def claim_entry(body: Mapping[str, Any]) -> dict[tuple[str, str], Claim]:
    """A memory's entry in the claim index; an invalid spec claims nothing."""
    try:
        claim = parse_memory(body).claim
    except SpecError:
        return {}
    return {claim.location: claim}


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
    an already accepted claim of another Kubernetes namespace. A refused claim owns
    nothing, so it blocks no one. Overlaps within one namespace are one tenant's
    business.
    """
    others = [c for c in index.get(claim.location, ()) if c.key != claim.key]
    accepted: list[Claim] = []
    for candidate in sorted([*others, claim], key=_precedence):
        rival = next(
            (other for other in accepted
             if other.namespace != candidate.namespace and other.overlaps(candidate)),
            None,
        )
        if candidate is claim:
            return rival
        if rival is None:
            accepted.append(candidate)
    return None


def _precedence(claim: Claim) -> tuple[bool, str, str, str]:
    return (not claim.bound, claim.created, claim.namespace, claim.name)
