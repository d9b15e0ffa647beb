"""Keep one memory's ``status.sidecars`` and ``SidecarsReady`` in line with its pods.

Called by the pod handlers whenever a labelled pod changes or goes away, and after
each reconcile of the memory (so a memory created after its pods shows them at
once). The consumers come from kopf's in-memory pod index: no API listing, and no
S3 request. Writes take the memory's lock, as a reconcile does, so neither rolls
the other's conditions back; nothing is written when nothing changed.

A pod whose label is changed in place (rare: labels come from pod templates, and a
changed template makes new pods) updates its new memory at once and its old one at
that memory's next re-probe tick: a watch event does not carry the old labels.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable

from amfs_operator import consumers
from amfs_operator.conditions import with_condition
from amfs_operator.consumers import Consumer
from amfs_operator.kube import Kube
from amfs_operator.locks import MemoryLocks
from amfs_operator.spec import parse_status

log = logging.getLogger(__name__)


def report(
    kube: Kube, locks: MemoryLocks, namespace: str, name: str, found: Iterable[Consumer]
) -> bool:
    """Write the memory's sidecar status if it changed; ``False`` if there is no memory
    (yet) or it is being deleted."""
    pods = sorted(found)
    sidecars = consumers.sidecars_status(pods)
    check = consumers.sidecars_check(pods)
    with locks.hold(namespace, name):
        body = kube.get_memory(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return False
        raw = body.get("status") or {}
        previous = parse_status(raw)
        conditions = with_condition(previous, consumers.CONDITION, check,
                                    generation=body["metadata"].get("generation"), now=_now())
        if raw.get("sidecars") == sidecars and conditions == previous.conditions:
            return True
        kube.patch_memory_status(namespace, name, {
            "sidecars": sidecars,
            "conditions": [c.as_dict() for c in conditions],
        })
    log.info("event=sidecars_reported memory=%s/%s sidecars=%s reason=%s",
             namespace, name, sidecars["summary"], check.reason)
    return True


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
