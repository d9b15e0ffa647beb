"""The OpenAPI 3 document of the sidecar API, generated from :mod:`amfs_sidecar.models`.

The same pydantic models validate requests in :mod:`amfs_sidecar.api`; the route
table here is checked against the registered routes by the tests, so the
document cannot describe an API the server does not serve.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from amfs_sidecar import models as m

REF = "#/components/schemas/{model}"

Status = int
# A response is one model, a content type, or several models (JSON Schema oneOf).
Response = type[BaseModel] | str | tuple[type[BaseModel], ...]


@dataclass(frozen=True)
class Operation:
    method: Literal["get", "post"]
    path: str
    summary: str
    params: type[BaseModel] | None = None
    path_params: tuple[str, ...] = ()
    bodies: tuple[type[BaseModel], ...] = ()
    responses: dict[Status, Response] = field(default_factory=dict)


_BAD = {400: m.ErrorResponse, 422: m.ErrorResponse, 503: m.ErrorResponse}

OPERATIONS: tuple[Operation, ...] = (
    Operation("get", "/health", "Liveness: the process serves requests.",
              responses={200: m.Health}),
    Operation("get", "/ready", "Readiness: first full sync done and the bucket reachable.",
              responses={200: m.Readiness, 503: m.Readiness}),
    Operation("get", "/openapi.json", "This document.", responses={200: "application/json"}),
    Operation("get", "/api/v1/health", "Liveness, in amfs-http-server's shape.",
              responses={200: m.ApiHealth}),
    Operation(
        "get", "/api/v1/entries/{entity_path}/{key}",
        "Read the current version of a key (from the index and cache unless consistent=true), "
        "or a given version. A missing one is 200 {status: not_found}, as upstream.",
        params=m.ReadParams, path_params=("entity_path", "key"),
        responses={200: (m.MemoryEntry, m.NotFound), **_BAD},
    ),
    Operation(
        "get", "/api/v1/entry",
        "The same read with the coordinates in the query: the route for keys holding '/'.",
        params=m.EntryParams, responses={200: (m.MemoryEntry, m.NotFound), **_BAD},
    ),
    Operation(
        "post", "/api/v1/entries",
        "Write a new version. Either the AMFS fields or {entry: MemoryEntry}.",
        bodies=(m.WriteRequest, m.EntryWriteRequest),
        responses={201: m.MemoryEntry, 403: m.ErrorResponse, 409: m.ErrorResponse,
                   413: m.ErrorResponse, **_BAD},
    ),
    Operation(
        "get", "/api/v1/entries",
        "List current entries (or every version), sorted; paged by offset or cursor, with the "
        "total over all pages.",
        params=m.ListParams, responses={200: m.EntryList, **_BAD},
    ),
    Operation(
        "get", "/api/v1/history/{entity_path}/{key}",
        "Every version of a key, oldest first (none for a missing key).",
        params=m.HistoryParams, path_params=("entity_path", "key"),
        responses={200: m.History, **_BAD},
    ),
    Operation(
        "get", "/api/v1/history", "History with the coordinates in the query (keys with '/').",
        params=m.HistoryQueryParams, responses={200: m.History, **_BAD},
    ),
    Operation(
        "post", "/api/v1/search",
        "Search current entries with AMFS filter semantics; a bare list, as upstream.",
        bodies=(m.SearchRequest,), responses={200: m.SearchResponse, **_BAD},
    ),
    Operation(
        "post", "/api/v1/outcomes",
        "Commit an outcome; cited entries get a new version with updated evidence.",
        bodies=(m.OutcomeRequest, m.OutcomeRecordRequest),
        responses={201: m.OutcomeCommitted, 403: m.ErrorResponse, 413: m.ErrorResponse, **_BAD},
    ),
    Operation(
        "get", "/api/v1/outcomes", "Outcome records, newest first.",
        params=m.OutcomeParams, responses={200: m.OutcomeList, **_BAD},
    ),
    Operation("get", "/api/v1/stats",
              "amfs-http-server's aggregates over current entries, and the index's counts.",
              responses={200: m.Stats}),
    Operation(
        "get", "/api/v1/stream",
        "Server-Sent Events: 'write' and 'outcome' events; resumable with the Last-Event-ID "
        "header (at least once, never a gap); 'reset' when it cannot resume (re-read if "
        "reread is true); ': heartbeat' comments keep idle connections open.",
        params=m.StreamParams,
        responses={200: "text/event-stream", **_BAD},
    ),
)


def _schemas() -> tuple[dict[tuple[type[BaseModel], str], str], dict[str, Any]]:
    """Component schemas for every model, keyed by (model, mode) → $ref."""
    pairs: list[tuple[type[BaseModel], JsonSchemaMode]] = []
    for op in OPERATIONS:
        pairs.extend((body, "validation") for body in op.bodies)
        for resp in op.responses.values():
            if isinstance(resp, tuple):
                pairs.extend((model, "serialization") for model in resp)
            elif not isinstance(resp, str):
                pairs.append((resp, "serialization"))
    pairs = list(dict.fromkeys(pairs))
    key_map, top = models_json_schema(pairs, ref_template=REF)
    refs: dict[tuple[type[BaseModel], str], str] = {
        (model, mode): schema["$ref"]  # type: ignore[misc]
        for (model, mode), schema in key_map.items()
    }
    return refs, top.get("$defs", {})


def _query_parameters(params: type[BaseModel]) -> list[dict[str, Any]]:
    schema = params.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema.get("properties", {}).items():
        description = prop.pop("description", None)
        parameter: dict[str, Any] = {
            "name": name, "in": "query", "required": name in required, "schema": prop,
        }
        if description:
            parameter["description"] = description
        out.append(parameter)
    return out


def _path_parameters(names: tuple[str, ...]) -> list[dict[str, Any]]:
    described = {
        "entity_path": "Entity path; may contain '/' (each segment percent-encoded).",
        "key": "Key: the last path segment (a key holding '/' goes through the query route).",
    }
    return [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"},
         "description": described.get(n, n)}
        for n in names
    ]


def _operation(op: Operation, refs: dict[tuple[type[BaseModel], str], str]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "summary": op.summary,
        "operationId": op.method + "_" + re.sub(r"[^a-z0-9]+", "_", op.path.lower()).strip("_"),
    }
    parameters = _path_parameters(op.path_params)
    if op.params is not None:
        parameters += _query_parameters(op.params)
    if op.path == "/api/v1/stream":
        parameters.append({
            "name": "Last-Event-ID", "in": "header", "required": False,
            "schema": {"type": "string"}, "description": "Resume after this event id.",
        })
    if op.path == "/api/v1/entries" and op.method == "post":
        parameters.append({
            "name": "Idempotency-Key", "in": "header", "required": False,
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9\\-_.:~+/=]{1,255}$"},
            "description": "A retry with the same key returns the first write's result "
                           "(409 if the request differs).",
        })
    if parameters:
        doc["parameters"] = parameters
    if op.bodies:
        variants = [{"$ref": refs[(b, "validation")]} for b in op.bodies]
        schema = variants[0] if len(variants) == 1 else {"oneOf": variants}
        doc["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    responses: dict[str, Any] = {}
    for status, resp in sorted(op.responses.items()):
        content: dict[str, Any]
        if isinstance(resp, str):
            content = {resp: {"schema": {"type": "string"} if resp.startswith("text/")
                                else {"type": "object"}}}
        elif isinstance(resp, tuple):
            variants = [{"$ref": refs[(model, "serialization")]} for model in resp]
            content = {"application/json": {"schema": {"oneOf": variants}}}
        else:
            content = {"application/json": {"schema": {"$ref": refs[(resp, "serialization")]}}}
        responses[str(status)] = {"description": _REASONS.get(status, "response"),
                                  "content": content}
    doc["responses"] = responses
    return doc


_REASONS = {
    200: "OK (a missing entry is {status: not_found})", 201: "Created",
    400: "Malformed request or an illegal name",
    403: "The sidecar is read-only", 404: "Not found", 409: "Version conflict",
    413: "Entry larger than the configured maximum", 422: "Body or query fails validation",
    503: "S3 unreachable or failing",
}


@cache
def build_openapi(version: str = "0.1.0") -> dict[str, Any]:
    """The whole OpenAPI 3.1 document."""
    refs, schemas = _schemas()
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "amfs-sidecar",
            "version": version,
            "description": "AMFS agent memory on S3, served to the pod over a Unix socket.",
        },
        "servers": [{"url": "http://localhost"}],
        "paths": paths,
        "components": {"schemas": schemas},
    }
