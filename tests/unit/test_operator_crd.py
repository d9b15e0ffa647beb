"""The one CRD: names, schema completeness, immutability rules, printer columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from amfs_operator import GROUP, KIND, PLURAL, VERSION, consumers
from amfs_operator.spec import (
    CONDITION_TYPES,
    DEFAULT_SCAN_PAGES,
    MAX_SCAN_PAGES,
    PHASES,
    MemorySpec,
    MemoryStatus,
    SidecarSpec,
)
from amfs_sidecar.sync import SCAN_PAGES_PER_INTERVAL

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "charts/amfs/crds/amfsmemories.amfs.dev.yaml").read_text())
VERSION_BLOCK = next(v for v in CRD["spec"]["versions"] if v["name"] == VERSION)
SCHEMA = VERSION_BLOCK["schema"]["openAPIV3Schema"]
SPEC = SCHEMA["properties"]["spec"]
STATUS = SCHEMA["properties"]["status"]


def test_names() -> None:
    assert CRD["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert CRD["spec"]["group"] == GROUP and CRD["spec"]["scope"] == "Namespaced"
    names = CRD["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (KIND, PLURAL, ["amem"])
    assert VERSION_BLOCK["served"] and VERSION_BLOCK["storage"]
    assert VERSION_BLOCK["subresources"] == {"status": {}}


def test_every_spec_field_of_the_model_is_declared() -> None:
    declared = set(SPEC["properties"])
    modelled = {field.alias or name for name, field in MemorySpec.model_fields.items()}
    assert declared == modelled
    assert SPEC["required"] == ["bucket"]
    sidecar = {field.alias or name for name, field in SidecarSpec.model_fields.items()}
    assert set(SPEC["properties"]["sidecar"]["properties"]) == sidecar


def test_every_status_field_is_declared_so_nothing_is_pruned() -> None:
    # status.sidecars and SidecarsReady are written apart from reconcile (sidecars.py).
    assert set(STATUS["properties"]) == set(MemoryStatus().as_dict()) | {"sidecars"}
    conditions = STATUS["properties"]["conditions"]["items"]["properties"]
    assert set(conditions) == {"type", "status", "reason", "message", "observedGeneration",
                               "lastTransitionTime"}
    assert conditions["type"]["enum"] == [*CONDITION_TYPES, consumers.CONDITION]
    sidecars = STATUS["properties"]["sidecars"]["properties"]
    assert set(sidecars) == set(consumers.sidecars_status([]))
    assert STATUS["properties"]["phase"]["enum"] == list(PHASES)


@pytest.mark.parametrize("field", ["bucket", "prefix", "namespace", "endpointURL"])
def test_location_fields_are_immutable(field: str) -> None:
    rules = SPEC["properties"][field]["x-kubernetes-validations"]
    assert any(rule["rule"] == "self == oldSelf" for rule in rules)
    assert all(field in rule["message"] for rule in rules)


@pytest.mark.parametrize("field", ["namespace", "endpointURL"])
def test_optional_location_fields_cannot_be_added_or_removed(field: str) -> None:
    rules = [rule["rule"] for rule in SPEC["x-kubernetes-validations"]]
    assert f"has(self.{field}) == has(oldSelf.{field})" in rules


def test_defaults_and_enums_match_the_model() -> None:
    props = SPEC["properties"]
    model = MemorySpec(bucket="bkt")
    assert props["prefix"]["default"] == model.prefix
    assert props["region"]["default"] == model.region
    assert props["createBucket"]["default"] is model.create_bucket
    assert props["deletionPolicy"]["default"] == model.deletion_policy
    assert props["deletionPolicy"]["enum"] == ["Retain", "Delete"]
    scan_pages = props["sidecar"]["properties"]["scanPages"]
    assert (scan_pages["default"], scan_pages["minimum"], scan_pages["maximum"]) == (
        DEFAULT_SCAN_PAGES, 1, MAX_SCAN_PAGES)
    secret_ref = props["credentials"]["properties"]["secretRef"]
    assert "namespace" not in secret_ref["properties"]  # same namespace only, by design


def test_printer_columns() -> None:
    columns = {c["name"]: c["jsonPath"] for c in VERSION_BLOCK["additionalPrinterColumns"]}
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Bucket"] == ".spec.bucket"
    assert columns["Prefix"] == ".spec.prefix"
    assert columns["Sidecars"] == ".status.sidecars.summary"  # kubectl get amem: SIDECARS 3/3
    assert columns["Age"] == ".metadata.creationTimestamp"


def plain_schema(node: Any) -> Any:
    """The schema as plain JSON Schema (without Kubernetes' extensions)."""
    if isinstance(node, dict):
        return {k: plain_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if isinstance(node, list):
        return [plain_schema(v) for v in node]
    return node


def test_example_manifest_validates_against_the_schema() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy/examples/amfsmemory.yaml").read_text()))
    memories = [d for d in docs if d and d.get("kind") == KIND]
    assert memories
    for memory in memories:
        jsonschema.validate(memory, plain_schema(SCHEMA))
        MemorySpec.model_validate(memory["spec"])


@pytest.mark.parametrize("spec", [
    {"bucket": "Upper"},
    {"bucket": "bkt", "deletionPolicy": "Sometimes"},
    {"bucket": "bkt", "prefix": "/abs"},
    {"bucket": "bkt", "credentials": {"serviceAccount": {"x": 1}}},
])
def test_schema_refuses_bad_specs(spec: dict[str, Any]) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {}, "spec": spec}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, plain_schema(SCHEMA))


def test_the_scan_pages_default_is_the_sidecars_own() -> None:
    # The operator passes --scan-pages only when the memory's value differs from this.
    assert DEFAULT_SCAN_PAGES == SCAN_PAGES_PER_INTERVAL
