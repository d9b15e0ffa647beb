"""Status logic: which condition wins, when transition times move, which events fire."""

from __future__ import annotations

from amfs_operator.conditions import (
    Check,
    Findings,
    desired_status,
    transitions,
    with_condition,
)
from amfs_operator.spec import MemoryStatus, parse_status

OK = Check.passed("SecretCopied", "copied")
BUCKET_OK = Check.passed("BucketReachable", "memory at s3://b/amfs/m/")
CW_OK = Check.passed("Supported", "enforced")


def status(findings: Findings, previous: MemoryStatus | None = None, now: str = "T1",
           generation: int = 1) -> MemoryStatus:
    return desired_status(findings, generation=generation, previous=previous or MemoryStatus(),
                          now=now, config_map_name="m-amfs", secret_name="m-amfs-credentials")


def test_all_good_is_ready() -> None:
    result = status(Findings(OK, BUCKET_OK, CW_OK))
    ready = result.condition("Ready")
    assert ready is not None and (ready.status, ready.reason) == ("True", "Ready")
    assert result.phase == "Ready"
    assert [c.type for c in result.conditions] == [
        "Ready", "CredentialsReady", "BucketReachable", "ConditionalWrites"]
    assert all(c.observed_generation == 1 for c in result.conditions)


def test_ready_reports_the_first_thing_to_fix() -> None:
    missing = Check.failed("SecretNotFound", "Secret t/creds does not exist yet")
    unknown = Check.unknown("CredentialsNotReady", "not probed")
    result = status(Findings(missing, unknown, unknown))
    ready = result.condition("Ready")
    assert ready is not None and (ready.reason, ready.message) == (missing.reason, missing.message)
    assert result.phase == "Pending"

    lost = Check.failed("BucketNotFound", "no bucket")
    assert status(Findings(OK, lost, unknown)).phase == "Failed"

    blocker = Check.failed("PrefixConflict", "taken")
    result = status(Findings(unknown, unknown, unknown, blocker=blocker))
    assert result.condition("Ready").reason == "PrefixConflict"  # type: ignore[union-attr]
    assert result.phase == "Failed"


def test_conditional_writes_false_does_not_block_ready() -> None:
    result = status(Findings(OK, BUCKET_OK, Check.failed("NotSupported", "ignored")))
    assert result.phase == "Ready"


def test_transition_time_moves_only_when_status_changes() -> None:
    first = status(Findings(OK, BUCKET_OK, CW_OK), now="T1")
    again = status(Findings(OK, BUCKET_OK, CW_OK), previous=first, now="T2", generation=2)
    assert {c.last_transition_time for c in again.conditions} == {"T1"}
    assert {c.observed_generation for c in again.conditions} == {2}

    lost = Check.failed("BucketNotFound", "gone")
    broken = status(Findings(OK, lost, Check.unknown("NotProbed", "-")), previous=again, now="T3")
    times = {c.type: c.last_transition_time for c in broken.conditions}
    assert times == {"Ready": "T3", "CredentialsReady": "T1", "BucketReachable": "T3",
                     "ConditionalWrites": "T3"}


def test_events_only_for_changed_conditions() -> None:
    first = status(Findings(OK, BUCKET_OK, CW_OK))
    events = transitions(MemoryStatus(), first)
    assert [(e.type, e.reason) for e in events] == [
        ("Normal", "Ready"), ("Normal", "SecretCopied"), ("Normal", "BucketReachable"),
        ("Normal", "Supported")]
    assert transitions(first, status(Findings(OK, BUCKET_OK, CW_OK), previous=first)) == []

    lost = Check.failed("BucketNotFound", "gone")
    broken = status(Findings(OK, lost, Check.unknown("NotProbed", "-")), previous=first)
    assert [(e.type, e.reason) for e in transitions(first, broken)] == [
        ("Warning", "BucketNotFound"), ("Warning", "BucketNotFound"), ("Normal", "NotProbed")]


def test_status_round_trips_through_the_api_form() -> None:
    first = status(Findings(OK, BUCKET_OK, CW_OK))
    assert parse_status(first.as_dict()).as_dict() == first.as_dict()
    assert parse_status({"conditions": [{"type": "Ready"}]}).conditions == ()  # tolerated


def test_a_reconcile_keeps_the_conditions_it_does_not_own() -> None:
    sidecars = Check.failed("SidecarsNotReady", "0 of 1 sidecars are ready")
    previous = MemoryStatus(conditions=with_condition(  # type: ignore[call-arg]
        MemoryStatus(), "SidecarsReady", sidecars, generation=1, now="T0"))

    result = status(Findings(OK, BUCKET_OK, CW_OK), previous, now="T1")

    kept = result.condition("SidecarsReady")
    assert kept == previous.condition("SidecarsReady")
    assert [c.type for c in result.conditions][-1] == "SidecarsReady"
    assert not [e for e in transitions(previous, result) if "Sidecars" in e.message]


def test_with_condition_moves_the_transition_time_only_when_the_status_changes() -> None:
    waiting = Check.failed("SidecarsNotReady", "0 of 2 sidecars are ready")
    first = MemoryStatus(conditions=with_condition(  # type: ignore[call-arg]
        MemoryStatus(), "SidecarsReady", waiting, generation=2, now="T0"))
    closer = Check.failed("SidecarsNotReady", "1 of 2 sidecars are ready")
    second = MemoryStatus(conditions=with_condition(  # type: ignore[call-arg]
        first, "SidecarsReady", closer, generation=2, now="T1"))
    done = with_condition(second, "SidecarsReady", Check.passed("AllReady", "2 of 2"),
                          generation=2, now="T2")

    assert second.condition("SidecarsReady").last_transition_time == "T0"  # type: ignore[union-attr]
    assert second.condition("SidecarsReady").message == closer.message  # type: ignore[union-attr]
    [ready] = done
    assert (ready.status, ready.last_transition_time, ready.observed_generation) == (
        "True", "T2", 2)


def test_a_memory_not_probed_is_ready_from_its_configuration() -> None:
    ambient = Check.passed("ServiceAccount", "the pods use their own identity")
    skipped = Check.unknown("NotProbed", "configuration written; the bucket is not probed")
    result = status(Findings(ambient, skipped, skipped, probed=False))
    ready = result.condition("Ready")
    assert ready is not None and (ready.status, ready.reason) == ("True", "ConfigurationOnly")
    assert result.phase == "Ready"
    # The same Unknown bucket of a memory that should have been probed is not Ready.
    probed = status(Findings(ambient, skipped, skipped)).condition("Ready")
    assert probed is not None and probed.status == "False"


def test_deletion_not_allowed_blocks() -> None:
    blocked = Check.failed("DeletionNotAllowed", "deletionPolicy: Delete needs a secretRef")
    result = status(Findings(OK, BUCKET_OK, CW_OK, blocker=blocked))
    ready = result.condition("Ready")
    assert ready is not None and (ready.status, ready.reason) == ("False", "DeletionNotAllowed")
    assert result.phase == "Failed"
