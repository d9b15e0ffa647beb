"""kopf wiring only: each handler hands its memory to :mod:`amfs_operator.reconcile`
and posts the events it announces as Kubernetes Events. :func:`build_registry` is the
one place that says which event runs which handler."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import kopf

from amfs_operator import GROUP, PLURAL, VERSION, consumers, index, injection, reconcile, sidecars
from amfs_operator.conditions import Event
from amfs_operator.consumers import Consumer
from amfs_operator.index import ClaimIndex, SecretIndex
from amfs_operator.kube import connection_info
from amfs_operator.reconcile import Outcome, Runtime

HANDLER_BACKOFF_SECONDS = 10.0
LABEL_MISSING_REASON = "MemoryLabelMissing"

PodIndex = Mapping[tuple[str, str], Iterable[Consumer]]  # (namespace, memory) -> its pods


def memory_claims(body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return index.claim_entry(body)


def memories_by_secret(body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return index.secret_entry(body)


def memory_pods(body: kopf.Body, namespace: str, **_: Any) -> dict[Any, Any]:
    """Index the pods using a memory: (namespace, memory) -> the pod as a consumer."""
    name, found = consumers.memory_of(body), consumers.consumer(body)
    return {(namespace, name): found} if name and found else {}


def reconcile_memory(
    namespace: str, name: str, memo: Runtime, memory_claims: ClaimIndex,
    memory_pods: PodIndex, **_: Any,
) -> None:
    """On create, update, resume and every re-probe tick. The sidecars first: the
    reconcile keeps their condition, so its status write is the last one."""
    sidecars.report(memo.kube, memo.locks, namespace, name,
                    _pods_of(memory_pods, namespace, name))
    reconcile.reconcile_stored(memo, namespace, name, memory_claims, announce=_emit)


def follow_consumer(
    body: kopf.Body, namespace: str, memo: Runtime, memory_pods: PodIndex, **_: Any
) -> None:
    """A labelled pod appeared, changed or went away: its memory's sidecar status follows."""
    name = consumers.memory_of(body)
    if name:
        sidecars.report(memo.kube, memo.locks, namespace, name,
                        _pods_of(memory_pods, namespace, name))


def explain_label(type: str | None, body: kopf.Body, **_: Any) -> None:
    """A new pod still opts in by the old annotation: tell it (Warning Event) about the label."""
    name = injection.annotated_memory(body)
    if type == "ADDED" and name:
        kopf.warn(body, reason=LABEL_MISSING_REASON,
                  message=injection.annotation_only_message(name))


def finalize_memory(
    body: kopf.Body, patch: kopf.Patch, memo: Runtime, memory_claims: ClaimIndex,
    logger: kopf.Logger, **_: Any,
) -> None:
    """On deletion: apply deletionPolicy, then let the finalizer go."""
    try:
        logger.info(reconcile.finalize(memo, body, memory_claims))
    except reconcile.DeletionBlocked as blocked:
        _write(body, blocked.outcome, patch)
        raise kopf.TemporaryError(str(blocked), delay=memo.deletion_retry) from None


def follow_source_secret(
    type: str | None, namespace: str, name: str, memo: Runtime,
    memories_by_secret: SecretIndex, memory_claims: ClaimIndex, **_: Any,
) -> None:
    """A source Secret appeared, changed or went away: re-reconcile the memories using it."""
    if type is None:  # the initial listing; resume handlers cover existing memories
        return
    for memory_name in memories_by_secret.get((namespace, name), ()):
        reconcile.reconcile_stored(memo, namespace, memory_name, memory_claims, announce=_emit)


def login(memo: Runtime, **_: Any) -> kopf.ConnectionInfo:
    """kopf uses the same cluster and identity as the operator's own client."""
    return connection_info(memo.kube.api.configuration)


def _pods_of(index: PodIndex, namespace: str, name: str) -> list[Consumer]:
    return list(index.get((namespace, name), ()))


def _write(body: Mapping[str, Any], outcome: Outcome, patch: kopf.Patch) -> None:
    _emit(body, outcome.events)
    if outcome.changed:
        patch.status.update(outcome.status.as_dict())


def _emit(body: Any, events: list[Event]) -> None:
    for event in events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


def build_registry(*, probe_interval: float) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    memory: dict[str, Any] = {"group": GROUP, "version": VERSION, "plural": PLURAL,
                              "registry": registry}
    retried: dict[str, Any] = {**memory, "backoff": HANDLER_BACKOFF_SECONDS}
    _wire(kopf.on.login(registry=registry), login)
    _wire(kopf.index(**memory), memory_claims)
    _wire(kopf.index(**memory), memories_by_secret)
    for on in (kopf.on.resume, kopf.on.create, kopf.on.update):
        _wire(on(**retried), reconcile_memory)
    _wire(kopf.on.delete(**retried), finalize_memory)
    _wire(kopf.timer(**memory, interval=probe_interval, initial_delay=probe_interval,
                     id="reprobe"), reconcile_memory)
    _wire(kopf.on.event("", "v1", "secrets", registry=registry), follow_source_secret)
    # Pods: read only (list, watch); kopf never patches them, as only event handlers
    # and an index are registered.
    pods: dict[str, Any] = {"group": "", "version": "v1", "plural": "pods", "registry": registry}
    _wire(kopf.index(**pods), memory_pods)
    _wire(kopf.on.event(**pods, labels={injection.LABEL_MEMORY: kopf.PRESENT}), follow_consumer)
    _wire(kopf.on.event(**pods, labels={injection.LABEL_MEMORY: kopf.ABSENT},
                        annotations={injection.ANNOTATION_MEMORY: kopf.PRESENT}), explain_label)
    return registry


def _wire(decorator: Callable[[Any], Any], handler: Callable[..., Any]) -> None:
    """Register *handler*; kopf passes indexes and ``memo`` by name, which its callback
    protocols cannot express, hence the untyped hand-over."""
    decorator(handler)
