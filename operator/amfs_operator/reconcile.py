"""Desired vs. observed for one AMFSMemory: children, credentials, bucket, status.

Entry points (each called by a thin kopf handler): :func:`reconcile_stored` for
create, update, resume, the re-probe timer and source-Secret changes — one
reconcile per memory at a time, from the status as stored; it hands the events to
the handler's ``announce`` and writes the status. :func:`finalize` for deletion
returns what it did, or raises :class:`DeletionBlocked` with the status to show.
Bad input never raises: it becomes ``Ready=False`` with a reason. Only
infrastructure failures (the Kubernetes API itself) raise, so kopf retries them.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from amfs_operator import cleanup, metrics, probe, resources
from amfs_operator.conditions import (
    BLOCKING_REASONS,
    Check,
    Event,
    Findings,
    deleting_status,
    desired_status,
    transitions,
)
from amfs_operator.exceptions import KubeError, Refused, S3ProbeError, SpecError
from amfs_operator.index import ClaimIndex, deletion_plan, find_conflict
from amfs_operator.kube import Applied, Kube
from amfs_operator.locks import MemoryLocks
from amfs_operator.probe import ClientCache, Target
from amfs_operator.spec import Memory, MemoryStatus, parse_memory, parse_status
from amfs_s3.config import ENV_ACCESS_KEY, ENV_SECRET_KEY

log = logging.getLogger(__name__)

# Seconds between attempts to write a status while the API is unreachable or failing
# (about half a minute in all, as long as an API server restart takes).
STATUS_WRITE_BACKOFFS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


@dataclass
class Runtime:
    """Shared by every handler through kopf's ``memo`` (shallow-copied per object)."""

    kube: Kube
    s3: ClientCache = field(default_factory=ClientCache)
    phases: metrics.PhaseBook = field(default_factory=metrics.PhaseBook)
    locks: MemoryLocks = field(default_factory=MemoryLocks)
    deletion_retry: float = 30.0  # seconds between attempts of a blocked deletion

    @property
    def lends_identity(self) -> bool:
        """``--allow-operator-identity``: serviceAccount memories may use the operator's."""
        return self.s3.allow_operator_identity

    @staticmethod
    def now() -> str:
        return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Outcome:
    status: MemoryStatus
    events: list[Event]
    changed: bool  # the status differs from the stored one


Announce = Callable[[Mapping[str, Any], list[Event]], None]  # post a memory's events


class DeletionBlocked(Exception):
    """The finalizer cannot finish yet; ``outcome`` says why in the status."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        ready = outcome.status.condition("Ready")
        super().__init__(ready.message if ready else "deletion blocked")


# ---- reconcile ---------------------------------------------------------------------------


def reconcile_stored(
    rt: Runtime, namespace: str, name: str, claims: ClaimIndex, announce: Announce
) -> None:
    """Reconcile the memory as stored now, ``announce`` the transitions, write the status.

    The body a kopf event carries can be older than a status another handler of the
    same memory has just written; starting from it would announce the same
    transitions twice. So: one reconcile per memory at a time, each from a fresh read.
    Events go out before the status is written (whoever sees the new status finds its
    events posted or on their way), and the write outlasts an API server restart, so
    a retried handler does not announce them again. A memory that is gone or being
    deleted is left alone.
    """
    with rt.locks.hold(namespace, name):
        body = rt.kube.get_memory(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        outcome = reconcile(rt, body, claims)
        announce(body, outcome.events)
        if outcome.changed:
            _write_status(rt.kube, namespace, name, outcome.status)


def _write_status(kube: Kube, namespace: str, name: str, status: MemoryStatus) -> None:
    for delay in (*STATUS_WRITE_BACKOFFS, None):
        try:
            kube.patch_memory_status(namespace, name, status.as_dict())
            return
        except KubeError as exc:
            if delay is None or not exc.transient:
                raise
            log.warning("event=status_write_retry memory=%s/%s in=%ss error=%s",
                        namespace, name, delay, exc)
            time.sleep(delay)


def reconcile(rt: Runtime, body: Mapping[str, Any], claims: ClaimIndex) -> Outcome:
    """Bring children, bucket and status in line with the spec; measured in metrics."""
    meta = body.get("metadata") or {}
    started = time.perf_counter()
    try:
        outcome = _reconcile(rt, body, claims)
    except Exception:
        metrics.RECONCILE_TOTAL.labels("error").inc()
        raise
    finally:
        metrics.RECONCILE_DURATION.observe(time.perf_counter() - started)
    ready = outcome.status.condition("Ready")
    refused = ready is not None and ready.reason in BLOCKING_REASONS
    metrics.RECONCILE_TOTAL.labels("permanent_error" if refused else "success").inc()
    rt.phases.set(meta.get("namespace", ""), meta.get("name", ""), outcome.status.phase)
    return outcome


def _reconcile(rt: Runtime, body: Mapping[str, Any], claims: ClaimIndex) -> Outcome:
    previous = parse_status(body.get("status"))
    generation = (body.get("metadata") or {}).get("generation")
    try:
        memory = parse_memory(body)
    except SpecError as exc:
        return _outcome(rt, previous, generation, _blocked("InvalidSpec", str(exc)), None, None)
    try:
        _refuse_conflict(memory, claims)
        _refuse_borrowed_deletion(rt, memory)
        _apply_config_map(rt.kube, memory)
        credentials, target = _gather_credentials(rt.kube, memory)
        secret_name = _apply_credentials_secret(rt.kube, memory, target, credentials)
    except Refused as exc:
        names = _names_still_bound(rt.kube, memory, previous, exc)
        return _outcome(rt, previous, generation, _blocked(exc.reason, exc.message), *names)
    if memory.spec.credentials.secret_ref is None and not rt.lends_identity:
        findings = _configuration_only(credentials)
    else:
        bucket, conditional = (_probe(rt, memory, target) if credentials.ok
                               else _not_probed(credentials))
        findings = Findings(credentials=credentials, bucket=bucket, conditional_writes=conditional)
    config_map_name = resources.config_map_name(memory.name)
    return _outcome(rt, previous, generation, findings, config_map_name, secret_name)


def _outcome(
    rt: Runtime,
    previous: MemoryStatus,
    generation: int | None,
    findings: Findings,
    config_map_name: str | None,
    secret_name: str | None,
) -> Outcome:
    status = desired_status(
        findings,
        generation=generation,
        previous=previous,
        now=rt.now(),
        config_map_name=config_map_name,
        secret_name=secret_name,
    )
    return Outcome(status, transitions(previous, status), status.as_dict() != previous.as_dict())


def _blocked(reason: str, message: str) -> Findings:
    skipped = Check.unknown(reason, "not checked: " + message)
    return Findings(
        credentials=skipped,
        bucket=skipped,
        conditional_writes=skipped,
        blocker=Check.failed(reason, message),
    )


def _refuse_conflict(memory: Memory, claims: ClaimIndex) -> None:
    rival = find_conflict(memory.claim, claims)
    if rival is not None:
        where = "in this namespace" if rival.namespace == memory.namespace else \
            "in another namespace"
        raise Refused(
            "PrefixConflict",
            f"s3://{memory.spec.bucket}/{memory.root} overlaps s3://{rival.bucket}/{rival.root} "
            f"of AMFSMemory {rival.namespace}/{rival.name} {where} (the same storage, "
            "whatever the endpoint's spelling); two memories may neither share a root nor "
            "nest one inside the other: choose a prefix or namespace outside it",
        )


def _refuse_borrowed_deletion(rt: Runtime, memory: Memory) -> None:
    spec = memory.spec
    if spec.deletion_policy == "Delete" and spec.credentials.secret_ref is None \
            and not rt.lends_identity:
        raise Refused(
            "DeletionNotAllowed",
            "spec.deletionPolicy: Delete needs spec.credentials.secretRef: the operator "
            "deletes a memory's data with the memory's own credentials only, and never "
            "lends its own S3 identity to a credentials.serviceAccount memory; set "
            "deletionPolicy: Retain, or use a secretRef",
        )


def _names_still_bound(
    kube: Kube, memory: Memory, previous: MemoryStatus, refusal: Refused
) -> tuple[str | None, str | None]:
    """The children a refused memory still has at the location its spec names.

    A memory bound before (e.g. nested or aliased roots that an older operator let
    through) keeps its ConfigMap, so its pods keep using that root; its status keeps
    saying so, and the claim index keeps counting it as bound, so no other memory's
    deletion removes its data.
    """
    if refusal.reason not in {"PrefixConflict", "DeletionNotAllowed"} or \
            previous.config_map_name is None:
        return None, None
    current = kube.get_config_map(memory.namespace, resources.config_map_name(memory.name))
    if current is None or not resources.is_owned_by(current, memory):
        return None, None
    if resources.bound_location(current) != resources.location_of(resources.s3_settings(memory)):
        return None, None
    return previous.config_map_name, previous.secret_name


def _apply_config_map(kube: Kube, memory: Memory) -> Applied:
    desired = resources.config_map(memory)
    current = kube.get_config_map(memory.namespace, desired["metadata"]["name"])
    if current is not None and resources.is_owned_by(current, memory):
        bound = resources.bound_location(current)
        wanted = resources.location_of(resources.s3_settings(memory))
        if bound != wanted:
            raise Refused(
                "ImmutableFieldChanged",
                "bucket, prefix, namespace and endpointURL cannot change after creation "
                f"(bound to bucket={bound[0]!r} prefix={bound[1]!r} namespace={bound[2]!r} "
                f"endpointURL={bound[3]!r}); create a new AMFSMemory instead",
            )
    return _apply_child(kube, memory, desired, current)


def _apply_child(
    kube: Kube, memory: Memory, desired: dict[str, Any], current: Mapping[str, Any] | None
) -> Applied:
    name = desired["metadata"]["name"]
    if current is None:
        kube.create(desired)
        log.info("event=child_created kind=%s namespace=%s name=%s",
                 desired["kind"], memory.namespace, name)
        return "created"
    if not resources.is_owned_by(current, memory):
        raise Refused(
            "NameTaken",
            f"{desired['kind']} {name} already exists and is not owned by this AMFSMemory; "
            "rename or delete it",
        )
    if not resources.needs_update(current, desired):
        return "unchanged"
    kube.merge_patch(desired, resources.update_patch(current, desired))
    log.info("event=child_updated kind=%s namespace=%s name=%s",
             desired["kind"], memory.namespace, name)
    return "updated"


def _gather_credentials(kube: Kube, memory: Memory) -> tuple[Check, Target]:
    spec = memory.spec
    target = Target(spec.bucket, memory.root, spec.endpoint_url, spec.region)
    ref = spec.credentials.secret_ref
    if ref is None:
        ambient = Check.passed(
            "ServiceAccount", "the pods use their own identity (workload identity), no static keys"
        )
        return ambient, target
    where = f"Secret {memory.namespace}/{ref.name} (spec.credentials.secretRef)"
    if ref.name == resources.secret_name(memory.name):
        return Check.failed("InvalidSecretRef", f"{where} is this memory's own copy"), target
    secret = kube.get_secret(memory.namespace, ref.name)
    if secret is None:
        return Check.failed("SecretNotFound", f"{where} does not exist yet"), target
    values = {key: resources.secret_value(secret, key)
              for key in (ref.access_key_id_key, ref.secret_access_key_key)}
    missing = sorted(key for key, value in values.items() if not value)
    if missing:
        return Check.failed(
            "SecretKeyMissing",
            f"{where} has no key {', '.join(repr(k) for k in missing)} "
            "(set accessKeyIDKey / secretAccessKeyKey to the keys it uses)",
        ), target
    target = Target(
        spec.bucket, memory.root, spec.endpoint_url, spec.region,
        access_key_id=values[ref.access_key_id_key],
        secret_access_key=values[ref.secret_access_key_key],
    )
    copied = f"copied from Secret {ref.name} into {resources.secret_name(memory.name)}"
    return Check.passed("SecretCopied", copied), target


def _apply_credentials_secret(
    kube: Kube, memory: Memory, target: Target, credentials: Check
) -> str | None:
    """Write the owned Secret; ``None`` where there is nothing (yet) to copy."""
    if not credentials.ok or target.access_key_id is None or target.secret_access_key is None:
        existing = kube.get_secret(memory.namespace, resources.secret_name(memory.name))
        return resources.secret_name(memory.name) if existing is not None else None
    desired = resources.credentials_secret(memory, target.access_key_id, target.secret_access_key)
    current = kube.get_secret(memory.namespace, desired["metadata"]["name"])
    _apply_child(kube, memory, desired, current)
    return str(desired["metadata"]["name"])


def _probe(rt: Runtime, memory: Memory, target: Target) -> tuple[Check, Check]:
    where = f"s3://{memory.spec.bucket}/{memory.root}"
    try:
        result = probe.probe(rt.s3, target, create=memory.spec.create_bucket)
    except S3ProbeError as exc:
        metrics.BUCKET_PROBE_FAILURES.labels(exc.reason).inc()
        return Check.failed(exc.reason, exc.message), Check.unknown(
            "NotProbed", "not probed: the bucket is not reachable"
        )
    if result.created_bucket:
        bucket = Check.passed("BucketCreated", f"created the bucket; memory at {where}")
    else:
        bucket = Check.passed("BucketReachable", f"memory at {where}")
    if result.conditional_writes is True:
        conditional = Check.passed("Supported", "If-None-Match: * is enforced; no lost updates")
    elif result.conditional_writes is False:
        conditional = Check.failed(
            "NotSupported",
            "the provider ignores If-None-Match: *; concurrent writers may overwrite versions "
            f"({result.detail})",
        )
    else:
        conditional = Check.unknown("ProbeFailed", result.detail)
    return bucket, conditional


def _not_probed(credentials: Check) -> tuple[Check, Check]:
    skipped = Check.unknown("CredentialsNotReady", "not probed: " + credentials.message)
    return skipped, skipped


def _configuration_only(credentials: Check) -> Findings:
    """A serviceAccount memory: only its pods hold its identity, so nothing is probed."""
    skipped = Check.unknown(
        "NotProbed",
        "configuration written; the bucket is not probed: the memory uses its pods' own "
        "identity (credentials.serviceAccount) and the operator never lends its own; the "
        "sidecar's /ready reports whether the bucket is reachable",
    )
    return Findings(credentials=credentials, bucket=skipped, conditional_writes=skipped,
                    probed=False)


# ---- finalize ----------------------------------------------------------------------------


def finalize(rt: Runtime, body: Mapping[str, Any], claims: ClaimIndex) -> str:
    """Apply ``deletionPolicy``; returns what was done, or raises :class:`DeletionBlocked`."""
    meta = body.get("metadata") or {}
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    with rt.locks.hold(namespace, name):
        try:
            memory = parse_memory(body)
        except SpecError:
            message = "the spec was invalid, so no data was ever written; nothing to delete"
        else:
            message = _delete_data(rt, body, memory, claims)
    rt.phases.forget(namespace, name)
    rt.locks.forget(namespace, name)
    return message


def _delete_data(rt: Runtime, body: Mapping[str, Any], memory: Memory, claims: ClaimIndex) -> str:
    where = f"s3://{memory.spec.bucket}/{memory.root}"
    if memory.spec.deletion_policy == "Retain":
        return f"deletionPolicy Retain: the data under {where} is kept"
    if memory.spec.credentials.secret_ref is None and not rt.lends_identity:
        return (f"deletionPolicy Delete not applied: the data under {where} is kept (a "
                "credentials.serviceAccount memory has no credentials the operator may use, "
                "and the operator never deletes with its own identity)")
    if not _bound_where_spec_says(rt.kube, memory):
        return (f"not deleting {where}: the memory's ConfigMap names another location "
                "(bucket, prefix, namespace and endpointURL are immutable)")
    plan = deletion_plan(memory.claim, claims)
    if plan.owner is not None:
        return (f"not deleting {where}: it overlaps s3://{plan.owner.bucket}/{plan.owner.root}, "
                f"the root of AMFSMemory {plan.owner.namespace}/{plan.owner.name}, which owns "
                "that data")
    try:
        target = _deletion_target(rt.kube, memory)
        count = cleanup.delete_root(
            rt.s3, target, keep=plan.keep,
            progress=lambda n: log.info("event=deleting memory=%s/%s prefix=%s deleted=%d",
                                        memory.namespace, memory.name, where, n),
        )
    except S3ProbeError as exc:
        previous = parse_status(body.get("status"))
        check = Check.failed(
            "DeletionBlocked",
            f"deletionPolicy Delete cannot remove {where}: {exc.message}; fix access, "
            "or set deletionPolicy: Retain to keep the data and let the deletion finish",
        )
        status = deleting_status(previous, check, now=rt.now())
        changed = status.as_dict() != previous.as_dict()
        raise DeletionBlocked(Outcome(status, transitions(previous, status), changed)) from None
    message = f"deletionPolicy Delete: removed {count} objects under {where}"
    if plan.keep:
        owners = ", ".join(f"{k.namespace}/{k.name}" for k in plan.keepers)
        message += f"; kept {', '.join(plan.keep)} (the roots of AMFSMemory {owners})"
    return message


def _bound_where_spec_says(kube: Kube, memory: Memory) -> bool:
    """No ConfigMap (never reconciled), or one recording the spec's location."""
    current = kube.get_config_map(memory.namespace, resources.config_map_name(memory.name))
    if current is None or not resources.is_owned_by(current, memory):
        return True
    return resources.bound_location(current) == resources.location_of(resources.s3_settings(memory))


def _deletion_target(kube: Kube, memory: Memory) -> Target:
    """Credentials from the owned copy (it outlives the source), else from the source.

    A memory with a secretRef is never deleted with the operator's own identity; one
    without only with ``--allow-operator-identity`` (the client cache enforces it).
    """
    spec = memory.spec
    ref = spec.credentials.secret_ref
    if ref is None:
        return Target(spec.bucket, memory.root, spec.endpoint_url, spec.region)
    for name, keys in (
        (resources.secret_name(memory.name), (ENV_ACCESS_KEY, ENV_SECRET_KEY)),
        (ref.name, (ref.access_key_id_key, ref.secret_access_key_key)),
    ):
        secret = kube.get_secret(memory.namespace, name)
        access, secret_key = (
            (resources.secret_value(secret, k) for k in keys) if secret else (None, None)
        )
        if access and secret_key:
            return Target(spec.bucket, memory.root, spec.endpoint_url, spec.region,
                                access_key_id=access, secret_access_key=secret_key)
    raise S3ProbeError(
        "CredentialsMissing",
        f"neither Secret {resources.secret_name(memory.name)} nor Secret {ref.name} holds "
        "the credentials",
    )
