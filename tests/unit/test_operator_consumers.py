"""Pods as consumers of a memory: from the pod's own status, never from S3."""

from __future__ import annotations

from typing import Any

import pytest

from amfs_operator import consumers
from amfs_operator.consumers import Consumer


def pod(name: str, *, sidecar: str | None = "native", ready: bool | None = True,
        memory: str | None = "team", **status: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "app:1"}]}
    statuses: dict[str, Any] = {"containerStatuses": [{"name": "app", "ready": True}]}
    if sidecar == "native":
        spec["initContainers"] = [{"name": "amfs-sidecar", "restartPolicy": "Always"}]
        if ready is not None:
            statuses["initContainerStatuses"] = [{"name": "amfs-sidecar", "ready": ready}]
    elif sidecar == "container":
        spec["containers"].append({"name": "amfs-sidecar"})
        if ready is not None:
            statuses["containerStatuses"].append({"name": "amfs-sidecar", "ready": ready})
    labels = {"amfs.dev/memory": memory} if memory else {}
    return {"metadata": {"name": name, "labels": labels}, "spec": spec,
            "status": {"phase": "Running", **statuses, **status}}


@pytest.mark.parametrize("mode", ["native", "container"])
def test_readiness_comes_from_the_sidecars_container_status(mode: str) -> None:
    assert consumers.consumer(pod("a", sidecar=mode)) == Consumer("a", True, True)
    assert consumers.consumer(pod("a", sidecar=mode, ready=False)) == Consumer("a", True, False)
    # Just created: the kubelet has not reported yet.
    assert consumers.consumer(pod("a", sidecar=mode, ready=None)) == Consumer("a", True, False)


def test_a_pod_without_the_sidecar_is_a_consumer_that_is_never_ready() -> None:
    assert consumers.consumer(pod("a", sidecar=None)) == Consumer("a", False, False)


def test_finished_and_deleting_pods_are_no_longer_consumers() -> None:
    assert consumers.consumer(pod("a", phase="Succeeded")) is None
    assert consumers.consumer(pod("a", phase="Failed")) is None
    going = pod("a")
    going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert consumers.consumer(going) is None


def test_the_memory_comes_from_the_label_only() -> None:
    assert consumers.memory_of(pod("a")) == "team"
    assert consumers.memory_of(pod("a", memory=None)) is None
    annotated = pod("a", memory=None)
    annotated["metadata"]["annotations"] = {"amfs.dev/memory": "team"}
    assert consumers.memory_of(annotated) is None


def test_status_counts_pods_injected_and_ready() -> None:
    found = [Consumer("a", True, True), Consumer("b", True, False), Consumer("c", False, False)]
    assert consumers.sidecars_status(found) == {
        "pods": 3, "injected": 2, "ready": 1, "summary": "1/3"}
    assert consumers.sidecars_status([]) == {"pods": 0, "injected": 0, "ready": 0,
                                             "summary": "0/0"}


def test_the_condition_names_the_pods_that_are_not_ready() -> None:
    check = consumers.sidecars_check([Consumer("b", True, False), Consumer("a", True, True),
                                      Consumer("c", False, False)])
    assert (check.status, check.reason) == ("False", "SidecarsNotReady")
    assert check.message.startswith("1 of 3 sidecars are ready; sidecar not ready in b; "
                                    "no sidecar in c")

    missing = consumers.sidecars_check([Consumer("c", False, False)])
    assert (missing.status, missing.reason) == ("False", "SidecarsMissing")


def test_the_condition_is_true_when_all_are_ready_or_none_use_it() -> None:
    ready = consumers.sidecars_check([Consumer("a", True, True), Consumer("b", True, True)])
    assert (ready.status, ready.reason, ready.message) == (
        "True", "AllReady", "2 of 2 sidecars are ready")
    assert consumers.sidecars_check([]).reason == "NoPods"


def test_a_long_list_of_pods_is_cut_short() -> None:
    waiting = [Consumer(f"p{i:02d}", True, False) for i in range(25)]
    message = consumers.sidecars_check(waiting).message
    assert "p09 and 15 more" in message and "p10" not in message
