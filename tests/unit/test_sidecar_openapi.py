"""The OpenAPI document is valid and generated from the request models."""

from __future__ import annotations

from openapi_spec_validator import validate

from amfs_sidecar import models
from amfs_sidecar.openapi import OPERATIONS, build_openapi


def test_document_is_valid_openapi_3() -> None:
    doc = build_openapi()
    validate(doc)
    assert doc["openapi"].startswith("3.")


def test_every_operation_is_documented_with_resolvable_schemas() -> None:
    doc = build_openapi()
    schemas = doc["components"]["schemas"]
    for op in OPERATIONS:
        operation = doc["paths"][op.path][op.method]
        for response in operation["responses"].values():
            for content in response["content"].values():
                ref = content["schema"].get("$ref")
                if ref:
                    assert ref.rsplit("/", 1)[1] in schemas


def test_schemas_follow_the_models() -> None:
    schemas = build_openapi()["components"]["schemas"]
    assert set(schemas["WriteRequest"]["properties"]) == set(models.WriteRequest.model_fields)
    assert set(schemas["SearchRequest"]["properties"]) == set(models.SearchRequest.model_fields)
    write_body = build_openapi()["paths"]["/api/v1/entries"]["post"]["requestBody"]
    variants = write_body["content"]["application/json"]["schema"]["oneOf"]
    assert [v["$ref"] for v in variants] == [
        "#/components/schemas/WriteRequest", "#/components/schemas/EntryWriteRequest"]


def test_query_parameters_come_from_the_params_models() -> None:
    read = build_openapi()["paths"]["/api/v1/entries/{entity_path}/{key}"]["get"]
    names = {p["name"]: p["in"] for p in read["parameters"]}
    assert names == {"entity_path": "path", "key": "path", "version": "query",
                     "consistent": "query", "min_confidence": "query", "branch": "query"}
    by_query = build_openapi()["paths"]["/api/v1/entry"]["get"]
    assert {p["name"] for p in by_query["parameters"] if p["required"]} == {"entity_path", "key"}
    stream = build_openapi()["paths"]["/api/v1/stream"]["get"]
    assert {"name": "Last-Event-ID", "in": "header"}.items() <= stream["parameters"][-1].items()
