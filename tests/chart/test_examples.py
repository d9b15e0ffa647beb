"""deploy/examples/: valid against the CRD and Kubernetes, and in step with the injector."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from amfs_operator import injection
from amfs_operator.injection import InjectionSettings
from tests.chart.conftest import EXAMPLES


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def example_objects() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
            for path in sorted(EXAMPLES.glob("*.yaml")) for doc in documents(path)]


def memories() -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in example_objects()
            if doc["kind"] == "AMFSMemory"}


def crd_validator(crd: dict[str, Any]) -> jsonschema.Draft7Validator:
    [version] = [v for v in crd["spec"]["versions"] if v["storage"]]
    # x-kubernetes-* keywords are the API server's; JSON Schema ignores unknown keywords.
    return jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"])


def test_the_examples_cover_aws_minio_an_agent_and_a_hand_written_pod() -> None:
    names = {path.name for path in EXAMPLES.glob("*.yaml")}
    assert {"amfsmemory.yaml", "amfsmemory-minio.yaml", "agent-deployment.yaml",
            "pod-with-sidecar.yaml"} <= names
    assert memories()["agent-memory-minio"]["spec"]["endpointURL"].startswith("http")
    assert "endpointURL" not in memories()["agent-memory"]["spec"]


@pytest.mark.parametrize("name", sorted(memories()))
def test_example_memories_match_the_crd_schema(crd: dict[str, Any], name: str) -> None:
    memory = memories()[name]
    assert memory["apiVersion"] == f"{crd['spec']['group']}/v1alpha1"
    crd_validator(crd).validate(memory)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda s: s.pop("bucket"), "bucket"),
        (lambda s: s.update(deletionPolicy="Shred"), "Shred"),
        (lambda s: s.update(endpointURL="minio:9000"), "minio:9000"),
        (lambda s: s["sidecar"].update(pollInterval="often"), "often"),
    ],
    ids=["no-bucket", "bad-policy", "endpoint-without-scheme", "bad-interval"],
)
def test_the_crd_schema_catches_broken_memories(crd: dict[str, Any], change: Any,
                                                field: str) -> None:
    memory = copy.deepcopy(memories()["agent-memory-minio"])
    change(memory["spec"])
    errors = list(crd_validator(crd).iter_errors(memory))
    assert errors and field in errors[0].message


@pytest.mark.parametrize(("name", "doc"), [o for o in example_objects()
                                          if o[1]["kind"] != "AMFSMemory"],
                         ids=[n for n, d in example_objects() if d["kind"] != "AMFSMemory"])
def test_example_kubernetes_objects_are_valid(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, "1.29", strict=True)


def example(filename: str, kind: str) -> dict[str, Any]:
    [doc] = [d for d in documents(EXAMPLES / filename) if d["kind"] == kind]
    return doc


def as_pod(template: dict[str, Any], namespace: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {**copy.deepcopy(template["metadata"]), "namespace": namespace},
            "spec": copy.deepcopy(template["spec"])}


def with_identity(memory: dict[str, Any], namespace: str) -> dict[str, Any]:
    memory = copy.deepcopy(memory)
    memory["metadata"].update(namespace=namespace, uid="00000000-0000-4000-8000-000000000000")
    return memory


def test_the_agent_deployment_is_injected_by_the_webhook() -> None:
    deployment = example("agent-deployment.yaml", "Deployment")
    template = deployment["spec"]["template"]
    name = template["metadata"]["labels"][injection.LABEL_MEMORY]
    assert injection.ANNOTATION_MEMORY not in template["metadata"]["annotations"]
    pod = as_pod(template, "default")

    result = injection.inject(pod, with_identity(memories()[name], "default"),
                              InjectionSettings())

    assert result.injected and not result.warnings
    kubernetes_validate.validate(result.pod, "1.29", strict=True)
    sidecar = result.pod["spec"]["initContainers"][0]
    assert sidecar["args"][sidecar["args"].index("--poll-interval") + 1] == "2"
    assert sidecar["resources"]["limits"]["memory"] == "512Mi"


def test_the_hand_written_pod_is_what_the_webhook_would_inject() -> None:
    written = example("pod-with-sidecar.yaml", "Pod")
    memory = with_identity(memories()["agent-memory"], "default")
    # The same pod before injection: the app container without the socket.
    bare = copy.deepcopy(written)
    assert bare["metadata"]["labels"][injection.LABEL_MEMORY] == "agent-memory"
    bare["metadata"]["namespace"] = "default"
    del bare["metadata"]["labels"][injection.LABEL_SIDECAR]
    del bare["spec"]["initContainers"], bare["spec"]["volumes"], bare["spec"]["securityContext"]
    agent = bare["spec"]["containers"][0]
    del agent["env"], agent["volumeMounts"]

    injected = injection.inject(bare, memory, InjectionSettings()).pod

    assert written["spec"] == injected["spec"]
    assert written["metadata"]["labels"][injection.LABEL_SIDECAR] == "manual"
