"""Which pods use a memory, and whether their sidecars are ready. Pure: pods in, status out.

A consumer is a pod labelled ``amfs.dev/memory: <name>`` that is neither finished
nor being deleted. Its sidecar is *ready* when the kubelet says so in the pod's
status: ``initContainerStatuses`` for the native sidecar, ``containerStatuses``
in container mode. Nothing here reads S3: the pods' own status is the only source.

The AMFSMemory gets ``status.sidecars`` (counts, and ``summary`` "ready/pods" for the
``SIDECARS`` printer column) and the condition ``SidecarsReady`` naming the pods
whose sidecar is missing or not ready.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from amfs_operator import resources
from amfs_operator.conditions import Check
from amfs_operator.injection import LABEL_MEMORY

CONDITION = "SidecarsReady"
# A condition message stays readable (and a status small) with thousands of pods.
MAX_NAMED_PODS = 10


@dataclass(frozen=True, order=True)
class Consumer:
    pod: str
    injected: bool
    ready: bool


def memory_of(pod: Mapping[str, Any]) -> str | None:
    """The memory a pod's label names, if any."""
    value = ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_MEMORY)
    return value.strip() if isinstance(value, str) and value.strip() else None


def consumer(pod: Mapping[str, Any]) -> Consumer | None:
    """The pod as a consumer of its memory; ``None`` if it is finished or going away."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") in {"Succeeded", "Failed"}:
        return None
    spec = pod.get("spec") or {}
    sidecars = [c for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
                if c.get("name") == resources.SIDECAR_NAME]
    statuses = [*(status.get("initContainerStatuses") or []),
                *(status.get("containerStatuses") or [])]
    ready = any(s.get("name") == resources.SIDECAR_NAME and s.get("ready") is True
                for s in statuses)
    return Consumer(str(meta.get("name", "")), bool(sidecars), bool(sidecars) and ready)


def sidecars_status(consumers: Iterable[Consumer]) -> dict[str, Any]:
    """``status.sidecars``: pods using the memory, how many have a sidecar, how many ready."""
    found = list(consumers)
    ready = sum(c.ready for c in found)
    return {
        "pods": len(found),
        "injected": sum(c.injected for c in found),
        "ready": ready,
        "summary": f"{ready}/{len(found)}",
    }


def sidecars_check(consumers: Iterable[Consumer]) -> Check:
    """The ``SidecarsReady`` condition: true when every consumer's sidecar is ready."""
    found = sorted(consumers)
    if not found:
        return Check.passed("NoPods", f"no pod is labelled {LABEL_MEMORY} with this memory")
    missing = [c.pod for c in found if not c.injected]
    waiting = [c.pod for c in found if c.injected and not c.ready]
    if not missing and not waiting:
        return Check.passed("AllReady", f"{len(found)} of {len(found)} sidecars are ready")
    parts = []
    if waiting:
        parts.append(f"sidecar not ready in {_names(waiting)}")
    if missing:
        parts.append(f"no sidecar in {_names(missing)} (created before the webhook ran, or "
                     "admitted under failurePolicy Ignore: restart them)")
    ready = len(found) - len(missing) - len(waiting)
    reason = "SidecarsNotReady" if waiting else "SidecarsMissing"
    return Check.failed(reason, f"{ready} of {len(found)} sidecars are ready; "
                        + "; ".join(parts))


def _names(pods: list[str]) -> str:
    shown = ", ".join(pods[:MAX_NAMED_PODS])
    more = len(pods) - MAX_NAMED_PODS
    return f"{shown} and {more} more" if more > 0 else shown
