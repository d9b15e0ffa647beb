"""Pure status logic: findings of one reconcile → conditions, phase and the events to emit."""

from __future__ import annotations

from dataclasses import dataclass

from amfs_operator.spec import Condition, ConditionStatus, MemoryStatus

# Reasons that no retry can fix: the spec (or another tenant) must change first.
BLOCKING_REASONS = frozenset(
    {"InvalidSpec", "PrefixConflict", "ImmutableFieldChanged", "NameTaken", "DeletionNotAllowed"}
)


@dataclass(frozen=True)
class Check:
    """The outcome of one check, in the words of a condition."""

    status: ConditionStatus
    reason: str
    message: str

    @classmethod
    def passed(cls, reason: str, message: str) -> Check:
        return cls("True", reason, message)

    @classmethod
    def failed(cls, reason: str, message: str) -> Check:
        return cls("False", reason, message)

    @classmethod
    def unknown(cls, reason: str, message: str) -> Check:
        return cls("Unknown", reason, message)

    @property
    def ok(self) -> bool:
        return self.status == "True"


@dataclass(frozen=True)
class Findings:
    """What one reconcile found; ``blocker`` stops everything else (bad spec, conflict).

    ``probed`` is false for a memory the operator may not probe (it has no credentials
    of its own): Ready then rests on the configuration alone.
    """

    credentials: Check
    bucket: Check
    conditional_writes: Check
    blocker: Check | None = None
    probed: bool = True


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


def ready_check(findings: Findings) -> Check:
    """Ready is the first failing check, in the order a user should fix them."""
    bucket = findings.bucket if findings.probed else None
    for check in (findings.blocker, findings.credentials, bucket):
        if check is not None and not check.ok:
            return Check.failed(check.reason, check.message)
    if not findings.probed:
        return Check.passed("ConfigurationOnly", findings.bucket.message)
    return Check.passed("Ready", findings.bucket.message)


def phase_of(findings: Findings) -> str:
    ready = ready_check(findings)
    if ready.ok:
        return "Ready"
    if findings.blocker is not None or ready.reason == findings.bucket.reason:
        return "Failed"
    return "Pending"


def desired_status(
    findings: Findings,
    *,
    generation: int | None,
    previous: MemoryStatus,
    now: str,
    config_map_name: str | None,
    secret_name: str | None,
) -> MemoryStatus:
    checks = {
        "Ready": ready_check(findings),
        "CredentialsReady": findings.credentials,
        "BucketReachable": findings.bucket,
        "ConditionalWrites": findings.conditional_writes,
    }
    conditions = tuple(
        _condition(type_, check, generation, previous.condition(type_), now)
        for type_, check in checks.items()
    ) + tuple(c for c in previous.conditions if c.type not in checks)  # e.g. SidecarsReady
    return MemoryStatus(  # type: ignore[call-arg]
        observedGeneration=generation,
        phase=phase_of(findings),
        conditions=conditions,
        configMapName=config_map_name,
        secretName=secret_name,
    )


def deleting_status(previous: MemoryStatus, check: Check, *, now: str) -> MemoryStatus:
    """Status of a memory whose finalizer cannot finish (``check`` says why)."""
    ready = _condition("Ready", Check.failed(check.reason, check.message),
                       previous.observed_generation, previous.condition("Ready"), now)
    others = tuple(c for c in previous.conditions if c.type != "Ready")
    return previous.model_copy(update={"phase": "Deleting", "conditions": (ready, *others)})


def transitions(previous: MemoryStatus, current: MemoryStatus) -> list[Event]:
    """One event per condition whose status changed (a first status counts as a change)."""
    events = []
    for condition in current.conditions:
        before = previous.condition(condition.type)
        if before is not None and before.status == condition.status:
            continue
        if before is None and condition.status == "Unknown":
            continue
        kind = "Warning" if condition.status == "False" else "Normal"
        message = f"{condition.type}={condition.status}: {condition.message}"
        events.append(Event(kind, condition.reason, message))
    return events


def with_condition(
    previous: MemoryStatus, type_: str, check: Check, *, generation: int | None, now: str
) -> tuple[Condition, ...]:
    """*previous*'s conditions with *type_* set from *check* (its transition time kept
    while its status holds)."""
    updated = _condition(type_, check, generation, previous.condition(type_), now)
    others = tuple(c for c in previous.conditions if c.type != type_)
    return (*others, updated) if previous.condition(type_) is None else tuple(
        updated if c.type == type_ else c for c in previous.conditions)


def _condition(
    type_: str, check: Check, generation: int | None, before: Condition | None, now: str
) -> Condition:
    changed = before is None or before.status != check.status
    return Condition(  # type: ignore[call-arg]
        type=type_,
        status=check.status,
        reason=check.reason,
        message=check.message,
        observedGeneration=generation,
        lastTransitionTime=now if changed or before is None else before.last_transition_time,
    )
