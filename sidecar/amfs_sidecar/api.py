"""The sidecar's HTTP routes, and the one place errors become HTTP statuses.

Handlers parse and validate (pydantic models from :mod:`amfs_sidecar.models`),
answer from the index and cache where they can, and hand anything that talks
to S3 to the worker pool (``offload``) so the event loop never blocks.

Routes, status codes and bodies follow amfs-http-server 0.3.66 wherever it has
the route (README, "API"): a missing entry is 200 ``{"status": "not_found"}``,
search answers a bare list, history and list carry upstream's envelopes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import contextlib
import functools
import json
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web
from amfs_core.abc import AdapterABC, WatchHandle
from amfs_core.aggregates import extended_stats_from_entries
from amfs_core.exceptions import AdapterError, AMFSError, VersionConflictError
from amfs_core.models import MemoryEntry, OutcomeRecord, SearchQuery
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ValidationError

from amfs_s3.adapter import S3Adapter
from amfs_s3.exceptions import IdempotencyKeyReusedError, InvalidNameError
from amfs_s3.idempotency import HEADER as IDEMPOTENCY_HEADER
from amfs_s3.idempotency import validate_idempotency_key, write_once
from amfs_s3.layout import (
    is_within,
    validate_entity_path,
    validate_key,
    validate_outcome_ref,
)
from amfs_sidecar import models
from amfs_sidecar.connections import DEFAULT_BODY_TIMEOUT
from amfs_sidecar.exceptions import EntryTooLargeError
from amfs_sidecar.guard import guard
from amfs_sidecar.index import EntryIndex, ValueCache, encode_entry
from amfs_sidecar.logs import fields
from amfs_sidecar.metrics import SidecarMetrics
from amfs_sidecar.openapi import build_openapi
from amfs_sidecar.stream import DEFAULT_HEARTBEAT_SECONDS, StreamHub, serve_stream
from amfs_sidecar.sync import Offload, Synchronizer, outcome_event, write_event

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

STREAM_ROUTE = "/api/v1/stream"
# [\s\S], not '.': a name holding a newline is refused by the naming rules (400),
# not left unmatched by the router (404).
ENTRY_PATH = r"{path:[\s\S]+}"
AGENT_ID_HEADER = "X-AMFS-Agent-Id"
# The AMFS schema tag amfs-http-server reports as its health's schema_version.
SCHEMA_VERSION = str(MemoryEntry.model_fields["amfs_version"].default)
# Room for JSON framing around an entry at the maximum size (escaping can grow it).
BODY_OVERHEAD_BYTES = 64 * 1024


class ApiError(Exception):
    """An error the API answers with *status* and ``{"detail": ...}``."""

    def __init__(self, status: int, detail: str, *, close_connection: bool = False,
                 **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extra = extra
        # The rest of a request that timed out may still arrive: never read it as the next.
        self.close_connection = close_connection


class ReadOnlyError(ApiError):
    def __init__(self) -> None:
        super().__init__(403, "this sidecar is read-only (--read-only): writes are refused")


def default_agent_id() -> str:
    """Who writes when nobody says: this host (in a pod the injector passes the pod name)."""
    return socket.gethostname()


class KeyLocks:
    """An asyncio lock per (entity_path, key), kept only while someone holds or
    waits for it, so the registry never outgrows the writes in flight."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, name: tuple[str, str]) -> AsyncIterator[None]:
        lock, users = self._locks.get(name, (asyncio.Lock(), 0))
        self._locks[name] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[name]
            if users == 1:
                del self._locks[name]
            else:
                self._locks[name] = (lock, users - 1)


@dataclass
class ApiContext:
    """Everything the handlers share; built once by the server."""

    adapter: S3Adapter
    index: EntryIndex
    cache: ValueCache
    hub: StreamHub
    sync: Synchronizer
    metrics: SidecarMetrics
    offload: Offload
    max_entry_bytes: int = 1024 * 1024
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    read_only: bool = False
    heartbeat: float = DEFAULT_HEARTBEAT_SECONDS
    version: str = "0.1.0"
    draining: bool = False
    agent_id: str = field(default_factory=default_agent_id)
    write_locks: KeyLocks = field(default_factory=KeyLocks)
    stats_memo: tuple[tuple[int, int, int], dict[str, Any]] | None = None


CTX = web.AppKey("amfs_ctx", ApiContext)


# -- errors --------------------------------------------------------------------


def error_response(status: int, detail: str, **extra: Any) -> web.Response:
    body = {"detail": detail, **{k: v for k, v in extra.items() if v is not None}}
    return web.json_response(body, status=status)


def _validation_detail(exc: ValidationError) -> tuple[str, list[dict[str, Any]]]:
    errors = [
        {"loc": [str(p) for p in err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    text = "; ".join(f"{'.'.join(e['loc']) or 'body'}: {e['msg']}" for e in errors)
    return text, errors


def map_exception(exc: BaseException) -> web.Response:
    """The one mapping from errors to HTTP answers."""
    if isinstance(exc, ApiError):
        response = error_response(exc.status, exc.detail, **exc.extra)
        if exc.close_connection:
            response.force_close()
        return response
    if isinstance(exc, ValidationError):
        text, errors = _validation_detail(exc)
        return error_response(422, text, type="ValidationError", errors=errors)
    if isinstance(exc, InvalidNameError):
        return error_response(400, str(exc), type="InvalidNameError", field=exc.field,
                              rule=exc.rule)
    if isinstance(exc, EntryTooLargeError):
        return error_response(413, str(exc), type="EntryTooLargeError", size=exc.size,
                              limit=exc.limit)
    if isinstance(exc, IdempotencyKeyReusedError):
        return error_response(409, str(exc), type="IdempotencyKeyReusedError",
                              field=IDEMPOTENCY_HEADER, entity_path=exc.entity_path,
                              key=exc.key, version=exc.version)
    if isinstance(exc, VersionConflictError):
        return error_response(409, str(exc), type="VersionConflictError",
                              entity_path=exc.entity_path, key=exc.key,
                              expected=exc.expected, actual=exc.actual)
    if isinstance(exc, AdapterError | BotoCoreError | ClientError):
        return error_response(503, f"storage unavailable: {exc}", type=type(exc).__name__)
    if isinstance(exc, ValueError | AMFSError):
        return error_response(400, str(exc), type=type(exc).__name__)
    logger.error("unhandled error", exc_info=exc)
    return error_response(500, "internal error; see the sidecar log", type="InternalError")


def _route_name(request: web.Request) -> str:
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None or getattr(info, "http_exception", None) is not None:
        return "unmatched"
    canonical: str = resource.canonical
    return canonical.replace("{path}", "{entity_path}/{key}")


@web.middleware
async def observe(request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]) -> Any:
    """Metrics for every route and JSON errors for every failure."""
    started = time.perf_counter()
    route = _route_name(request)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        # aiohttp's own refusals (404, 405, 413): its 413 text carries the sizes.
        detail = exc.text if exc.status == 413 and exc.text else exc.reason
        response = error_response(exc.status, detail)
    except asyncio.CancelledError:
        raise
    except ConnectionResetError:
        # The client left before its answer: nothing failed here and nobody reads
        # a status; aiohttp drops the write to the closed connection quietly.
        logger.debug("client disconnected", extra=fields(route=route, method=request.method))
        return web.Response(status=499)
    except Exception as exc:
        response = map_exception(exc)
    if not response.prepared:
        # A response already prepared was streamed: its handler counted it at the
        # first byte, since a stream's lifetime is no request latency.
        request.app[CTX].metrics.observe_request(
            request.method, route, response.status, time.perf_counter() - started
        )
    return response


# -- parsing -------------------------------------------------------------------


def _query(request: web.Request, model: type[M]) -> M:
    return model.model_validate(dict(request.query))


# A JSON escape of a UTF-16 surrogate, or one encoded as UTF-8 bytes (json.loads
# decodes with surrogatepass): only then can a parsed string hold a lone one.
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_SURROGATE = re.compile("[\ud800-\udfff]")


async def _json_object(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        raise ApiError(400, "request body is required (a JSON object)")
    timeout = request.app[CTX].body_timeout
    try:
        raw = await asyncio.wait_for(request.read(), timeout)
    except TimeoutError:
        raise ApiError(408, f"request body not received within {timeout:g} s of its head "
                            "(--body-timeout); the connection is closed",
                       close_connection=True) from None
    except web.RequestPayloadError as exc:  # e.g. a Content-Encoding the body does not match
        reason = " ".join(str(exc).split()).removeprefix("400, message: ")
        raise ApiError(400, f"request body could not be read: {reason}") from None
    try:
        data = json.loads(raw, object_pairs_hook=_unique_keys)
    except _DuplicateKeyError as exc:
        raise ApiError(400, f"request body has the key {exc.key!r} more than once in one "
                            "object (each JSON object key must be unique)",
                       field=exc.key) from None
    except ValueError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "request body is not valid JSON: it nests arrays or objects deeper "
                            "than the parser allows (about 1,000 levels)") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"request body must be a JSON object, not {type(data).__name__}")
    if _ESCAPED_SURROGATE.search(raw):
        where = _lone_surrogate(data)
        if where is not None:
            raise ApiError(400, f"{where} holds a lone UTF-16 surrogate, which is not a "
                                "character (strings must be valid Unicode: surrogates only in "
                                "pairs)", field=where)
    return data


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a repeated key rather than letting the last one win."""
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKeyError(key)
            seen.add(key)
    return data


def _lone_surrogate(data: Any) -> str | None:
    """Where in *data* a string (or object key) holds an unpaired surrogate, or None.

    Iterative: the body may nest as deep as the JSON parser allowed.
    """
    stack: list[tuple[str, Any]] = [("body", data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return where
        elif isinstance(value, dict):
            for key, item in value.items():
                if _SURROGATE.search(key):
                    return f"{where} key {key!r}"
                stack.append((f"{where}.{key}" if where == "body" else f"{where}[{key!r}]", item))
        elif isinstance(value, list):
            stack.extend((f"{where}[{n}]", item) for n, item in enumerate(value))
    return None


def _checked_name(ctx: ApiContext, entity_path: str, key: str) -> tuple[str, str]:
    """Names a write would accept, or the write's 400: a read of a name that can
    never be stored must not look like a read of one that was not."""
    validate_entity_path(entity_path)
    validate_key(key)
    ctx.adapter.layout.check_names(entity_path, key)
    return entity_path, key


def _entry_name(request: web.Request) -> tuple[str, str]:
    """``{entity_path}/{key}`` from the path: the key is the last segment (a key
    holding '/' is read through the query routes, as upstream)."""
    path = request.match_info["path"]
    if "/" not in path:
        raise ApiError(400, f"path must name an entity and a key: .../{{entity_path}}/{{key}}, "
                            f"got {path!r}")
    entity_path, key = path.rsplit("/", 1)
    return _checked_name(request.app[CTX], entity_path, key)


def _agent_id(request: web.Request, sent: str | None) -> str:
    """Who writes: the body's agent_id, else the X-AMFS-Agent-Id header, else the
    sidecar's own --agent-id (in pods the pod name)."""
    if sent:
        return sent
    header = request.headers.get(AGENT_ID_HEADER, "").strip()
    return header or request.app[CTX].agent_id


def _not_found(entity_path: str, key: str, **extra: Any) -> web.Response:
    body = models.NotFound(status="not_found", entity_path=entity_path, key=key).model_dump()
    return web.json_response({**body, **extra})


def _check_size(body: bytes, limit: int) -> None:
    if len(body) > limit:
        raise EntryTooLargeError(len(body), limit)


def _json_bytes(data: bytes) -> web.Response:
    return web.Response(body=data, content_type="application/json")


def _entries_json(bodies: list[bytes], total: int, next_cursor: str | None = None
                  ) -> web.Response:
    tail = json.dumps({"total": total, "next_cursor": next_cursor}).encode()
    return _json_bytes(b'{"entries":[' + b",".join(bodies) + b"]," + tail[1:])


def _encode_cursor(position: tuple[str, str, int]) -> str:
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, str, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        entity_path, key, version = json.loads(raw)
        return str(entity_path), str(key), int(version)
    except (binascii.Error, ValueError, TypeError, OverflowError) as exc:
        raise ApiError(400, f"cursor {cursor!r} is not a cursor this API returned: {exc}") from None
    except RecursionError:
        raise ApiError(400, f"cursor {cursor!r} is not a cursor this API returned") from None


# -- health --------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    return web.json_response(models.Health().model_dump())


async def api_health(request: web.Request) -> web.Response:
    body = models.ApiHealth(version=request.app[CTX].version, schema_version=SCHEMA_VERSION)
    return web.json_response(body.model_dump())


async def ready(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    sync = ctx.sync
    if ctx.draining:
        body = models.Readiness(status="unavailable", synced=sync.index.synced,
                                bucket_reachable=sync.bucket_reachable, detail="shutting down")
        return web.json_response(body.model_dump(), status=503)
    if sync.ready:
        body = models.Readiness(status="ready", synced=True, bucket_reachable=True)
    else:
        body = models.Readiness(
            status="starting" if sync.last_error is None else "unavailable",
            synced=sync.index.synced, bucket_reachable=sync.bucket_reachable,
            detail=sync.last_error,
        )
    return web.json_response(body.model_dump(), status=200 if sync.ready else 503)


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(build_openapi(request.app[CTX].version))


# -- entries -------------------------------------------------------------------


async def _current(ctx: ApiContext, entity_path: str, key: str, consistent: bool
                   ) -> MemoryEntry | None:
    """The current entry: cached bytes when the index knows it, else from S3."""
    if ctx.index.synced and not consistent:
        version = ctx.index.current(entity_path, key)
        if version == 0:
            return None
        cached = ctx.cache.get(entity_path, key, version)
        if cached is not None:
            return cached.entry
        entry = await ctx.offload(ctx.adapter.read_at_version, entity_path, key, version)
        if entry is None:  # listed but gone: only when the memory is being deleted
            return None
        ctx.cache.put(entry)
        return entry
    entry = await ctx.offload(ctx.adapter.read, entity_path, key)
    if entry is not None:
        ctx.index.observe(entity_path, key, entry.version)
        ctx.cache.put(entry)
    return entry


async def read_entry(request: web.Request) -> web.Response:
    entity_path, key = _entry_name(request)
    return await _read(request.app[CTX], entity_path, key, _query(request, models.ReadParams))


async def read_entry_by_query(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    params = _query(request, models.EntryParams)
    entity_path, key = _checked_name(ctx, params.entity_path, params.key)
    return await _read(ctx, entity_path, key, params)


async def _read(ctx: ApiContext, entity_path: str, key: str, params: models.ReadParams
                ) -> web.Response:
    if params.version is not None:
        body = await ctx.sync.entry_body(entity_path, key, params.version)
        if body is None:
            return _not_found(entity_path, key, version=params.version)
        return _json_bytes(body)
    entry = await _current(ctx, entity_path, key, params.consistent)
    if isinstance(entry, MemoryEntry) and (
        entry.confidence < params.min_confidence or entry.is_expired()
    ):
        entry = None
    if entry is None:
        return _not_found(entity_path, key)
    cached = ctx.cache.peek(entity_path, key)
    if cached is not None and cached.entry is entry:
        return _json_bytes(cached.body)
    return _json_bytes(encode_entry(entry))


async def write_entry(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    if ctx.read_only:
        raise ReadOnlyError()
    idempotency_key = request.headers.get(IDEMPOTENCY_HEADER)
    if idempotency_key is not None:
        validate_idempotency_key(idempotency_key)
    data = await _json_object(request)
    if "entry" in data:
        entry = models.EntryWriteRequest.model_validate(data).entry
    else:
        write = models.WriteRequest.model_validate(data)
        write.agent_id = _agent_id(request, write.agent_id)
        entry = write.to_entry()
    _checked_name(ctx, entry.entity_path, entry.key)
    _check_size(encode_entry(entry), ctx.max_entry_bytes)
    # One write per key at a time from this sidecar: its versions then reach the
    # streams in order (concurrent writes would publish 14 before 13), and they
    # do not race each other for the next version number on S3.
    async with ctx.write_locks.hold((entry.entity_path, entry.key)):
        # The index knows the current version, so the write is one version PUT
        # and the journal PUT: no LIST (a stale index costs a 412 and a LIST). The
        # 201 waits for the journal record: other pods hear of what it acknowledges.
        known = ctx.index.current(entry.entity_path, entry.key)
        written, change = await ctx.offload(functools.partial(
            write_once, ctx.adapter, entry, idempotency_key,
            known_version=known if known or ctx.index.synced else None, wait_for_journal=True))
        body = encode_entry(written)
        ctx.index.observe(written.entity_path, written.key, written.version)
        ctx.cache.put(written, body)
        ctx.sync.note_local(change)
        ctx.hub.publish(write_event(change, body))
    logger.info("write", extra=fields(entity_path=written.entity_path, key=written.key,
                                      version=written.version, bytes=len(body)))
    return web.Response(body=body, status=201, content_type="application/json")


async def _bodies(ctx: ApiContext, names: list[tuple[str, str, int]]) -> list[bytes | None]:
    """JSON of each named version, in order (None: gone), fetched concurrently."""
    return list(await asyncio.gather(*(ctx.sync.entry_body(*name) for name in names)))


async def _listed_names(ctx: ApiContext, scope: str | None, params: models.ListParams
                        ) -> list[tuple[str, str, int]]:
    """(entity, key, version) the listing covers, sorted: from the index, or from
    S3 listings (no GETs) for every version or before the first sync."""
    if not params.include_superseded and ctx.index.synced:
        return ctx.index.names(scope, subtree=params.subtree)
    scanned = await ctx.offload(lambda: ctx.adapter.scan_versions(scope, subtree=True))
    return sorted(
        (entity, key, number)
        for (entity, key), numbers in scanned.items()
        if scope is None or entity == scope or (params.subtree and is_within(entity, scope))
        for number in (numbers if params.include_superseded else numbers[-1:])
    )


async def list_entries(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    params = _query(request, models.ListParams)
    scope = params.entity_path if params.entity_path not in (None, "", "*") else None
    if scope is not None:
        validate_entity_path(scope)
    after = _decode_cursor(params.cursor) if params.cursor else None
    names = await _listed_names(ctx, scope, params)
    total = len(names)
    if after is not None:
        names = [n for n in names if n > after]
    names = names[params.offset :]
    page_names = names[: params.limit]
    more = len(names) > params.limit
    bodies = [b for b in await _bodies(ctx, page_names) if b is not None]
    return _entries_json(bodies, total, _encode_cursor(page_names[-1]) if more else None)


async def history(request: web.Request) -> web.Response:
    entity_path, key = _entry_name(request)
    return await _history(request.app[CTX], entity_path, key,
                          _query(request, models.HistoryParams))


async def history_by_query(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    params = _query(request, models.HistoryQueryParams)
    entity_path, key = _checked_name(ctx, params.entity_path, params.key)
    return await _history(ctx, entity_path, key, params)


def _written_between(entry: MemoryEntry, params: models.HistoryParams) -> bool:
    written = _aware(entry.provenance.written_at)
    if params.since is not None and written < _aware(params.since):
        return False
    return params.until is None or written <= _aware(params.until)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def _history(ctx: ApiContext, entity_path: str, key: str, params: models.HistoryParams
                   ) -> web.Response:
    """Every version, oldest first; a missing key has none (200, as upstream)."""
    versions: list[MemoryEntry] = await ctx.offload(ctx.adapter.history, entity_path, key)
    bodies = [encode_entry(e) for e in versions if _written_between(e, params)]
    head = json.dumps({"entity_path": entity_path, "key": key, "version_count": len(bodies)})
    return _json_bytes(head[:-1].encode() + b',"versions":[' + b",".join(bodies) + b"]}")


# -- search --------------------------------------------------------------------


class _Snapshot(AdapterABC):
    """Loaded entries dressed as an adapter, so AMFS's own search semantics apply."""

    def __init__(self, entries: list[MemoryEntry]) -> None:
        self._entries = entries

    def list(self, entity_path: str | None = None, *, include_superseded: bool = False,
             **_: Any) -> list[MemoryEntry]:
        if entity_path is None:
            return list(self._entries)
        return [e for e in self._entries if e.entity_path == entity_path]

    def read(self, entity_path: str, key: str, *, min_confidence: float = 0.0
             ) -> MemoryEntry | None:
        raise NotImplementedError

    def write(self, entry: MemoryEntry) -> MemoryEntry:
        raise NotImplementedError

    def watch(self, entity_path: str, callback: Callable[[MemoryEntry], None]) -> WatchHandle:
        raise NotImplementedError

    def commit_outcome(self, record: OutcomeRecord) -> builtins.list[MemoryEntry]:
        raise NotImplementedError


async def _entries(ctx: ApiContext, names: list[tuple[str, str, int]]) -> list[MemoryEntry]:
    """Entries for index names: cached objects where possible, else parsed from the
    bodies loaded for them (the cache may be smaller than the candidates)."""
    bodies = await _bodies(ctx, names)
    entries = []
    for (entity_path, key, version), body in zip(names, bodies, strict=True):
        cached = ctx.cache.peek(entity_path, key)
        if body is None:
            continue
        if cached is not None and cached.entry.version == version:
            entries.append(cached.entry)
        else:
            entries.append(MemoryEntry.model_validate_json(body))
    return entries


def _candidates(index: EntryIndex, query: SearchQuery) -> list[tuple[str, str, int]]:
    """Only the index names the query can match need loading."""
    if query.entity_paths:
        picked: dict[tuple[str, str, int], None] = {}
        for path in query.entity_paths:
            for name in index.names(path, subtree=query.include_descendants):
                picked[name] = None
        return list(picked)
    if query.entity_path:
        return index.names(query.entity_path, subtree=query.include_descendants)
    return index.names(None)


async def search(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    query = models.SearchRequest.model_validate(await _json_object(request)).to_query()
    for path in [query.entity_path, *(query.entity_paths or [])]:
        if path:
            validate_entity_path(path)
    if not ctx.index.synced:
        results: list[MemoryEntry] = await ctx.offload(ctx.adapter.search, query)
    else:
        results = _Snapshot(await _entries(ctx, _candidates(ctx.index, query))).search(query)
    # A bare list, as amfs-http-server (its clients index the answer directly).
    return _json_bytes(b"[" + b",".join(encode_entry(e) for e in results) + b"]")


# -- outcomes ------------------------------------------------------------------


async def commit_outcome(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    if ctx.read_only:
        raise ReadOnlyError()
    data = await _json_object(request)
    if "record" in data:
        record = models.OutcomeRecordRequest.model_validate(data).record
    else:
        outcome = models.OutcomeRequest.model_validate(data)
        outcome.agent_id = _agent_id(request, outcome.agent_id)
        record = outcome.to_record()
    validate_outcome_ref(record.outcome_ref)
    _check_size(record.model_dump_json().encode(), ctx.max_entry_bytes)
    updated, changes = await ctx.offload(functools.partial(
        ctx.adapter.commit_outcome_with_changes, record, wait_for_journal=True))
    ctx.index.add_outcome(record.outcome_ref)
    bodies: dict[tuple[str, str, int], bytes] = {}
    for entry in updated:
        body = encode_entry(entry)
        bodies[(entry.entity_path, entry.key, entry.version)] = body
        ctx.index.observe(entry.entity_path, entry.key, entry.version)
        ctx.cache.put(entry, body)
    for change in changes:
        ctx.sync.note_local(change)
        if change.kind == "outcome":
            ctx.hub.publish(outcome_event(change, record))
        elif (change.entity_path, change.key, change.version) in bodies:
            body = bodies[(change.entity_path or "", change.key or "", change.version or 0)]
            ctx.hub.publish(write_event(change, body))
    logger.info("outcome", extra=fields(outcome_ref=record.outcome_ref,
                                        outcome_type=record.outcome_type.value,
                                        updated=len(updated)))
    head = json.dumps({"outcome_ref": record.outcome_ref,
                       "outcome_type": record.outcome_type.value,
                       "affected_entries": len(updated)})
    body = (head[:-1].encode() + b',"entries":['
            + b",".join(bodies[(e.entity_path, e.key, e.version)] for e in updated)
            + b'],"outcome":' + record.model_dump_json().encode() + b"}")
    return web.Response(body=body, status=201, content_type="application/json")


async def list_outcomes(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    params = _query(request, models.OutcomeParams)
    if params.entity_path:
        validate_entity_path(params.entity_path)
    if params.outcome_ref:
        validate_outcome_ref(params.outcome_ref)
    records = await ctx.offload(
        lambda: ctx.adapter.list_outcomes(entity_path=params.entity_path, since=params.since,
                                          limit=params.limit, outcome_ref=params.outcome_ref)
    )
    return _json_bytes(models.OutcomeList(outcomes=records).model_dump_json().encode())


# -- stats and stream ----------------------------------------------------------


async def _aggregates(ctx: ApiContext) -> dict[str, Any]:
    """amfs-http-server's stats over the current entries (``amfs_core``'s own
    aggregate, so the numbers match upstream's). It reads every current entry
    (cache, else one GET each), so the answer is kept until the index moves."""
    if not ctx.index.synced:
        entries: list[MemoryEntry] = await ctx.offload(ctx.adapter.list)
        return extended_stats_from_entries(entries)
    mark = (ctx.index.mark(), ctx.index.count("versions"), ctx.index.count("entries"))
    if ctx.stats_memo is not None and ctx.stats_memo[0] == mark:
        return ctx.stats_memo[1]
    aggregates = extended_stats_from_entries(await _entries(ctx, ctx.index.names(None)))
    ctx.stats_memo = (mark, aggregates)
    return aggregates


async def stats(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    body = models.Stats(
        **await _aggregates(ctx),
        entries=ctx.index.count("entries"),
        versions=ctx.index.count("versions"),
        outcomes=ctx.index.count("outcomes"),
        watchers=len(ctx.hub),
        synced=ctx.index.synced,
        conditional_writes_supported=ctx.sync.conditional_writes,
        last_poll_success_unix=ctx.sync.last_poll_success,
        cache=models.CacheStats(**ctx.cache.stats()),
    )
    return web.Response(body=body.model_dump_json(), content_type="application/json")


async def stream(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    params = _query(request, models.StreamParams)
    if params.entity_path not in ("", "*"):
        validate_entity_path(params.entity_path)
    # An id that cannot be resumed is answered in the stream (event: reset), not
    # with a 400: a client that reconnects on its own would retry a 400 forever.
    last_event_id = request.headers.get("Last-Event-ID") or None
    started = time.perf_counter()
    return await serve_stream(
        request, ctx.hub, scope=params.entity_path, last_event_id=last_event_id,
        resume=ctx.sync.resume, fill=ctx.sync.fill, heartbeat=ctx.heartbeat,
        on_prepared=lambda: ctx.metrics.observe_request(
            request.method, STREAM_ROUTE, 200, time.perf_counter() - started),
    )


# -- the application -----------------------------------------------------------


def add_probe_routes(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)


def build_app(ctx: ApiContext) -> web.Application:
    """The API application (served on the socket and the optional TCP listener)."""
    app = web.Application(
        middlewares=[observe, guard],  # guard inside observe: refusals are counted too
        client_max_size=ctx.max_entry_bytes + BODY_OVERHEAD_BYTES,
    )
    app[CTX] = ctx
    add_probe_routes(app)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/api/v1/health", api_health)
    app.router.add_get("/api/v1/entry", read_entry_by_query)
    app.router.add_get("/api/v1/entries/" + ENTRY_PATH, read_entry)
    app.router.add_post("/api/v1/entries", write_entry)
    app.router.add_get("/api/v1/entries", list_entries)
    app.router.add_get("/api/v1/history", history_by_query)
    app.router.add_get("/api/v1/history/" + ENTRY_PATH, history)
    app.router.add_post("/api/v1/search", search)
    app.router.add_post("/api/v1/outcomes", commit_outcome)
    app.router.add_get("/api/v1/outcomes", list_outcomes)
    app.router.add_get("/api/v1/stats", stats)
    app.router.add_get(STREAM_ROUTE, stream)

    async def close_streams(_: web.Application) -> None:
        ctx.hub.close_all()

    app.on_shutdown.append(close_streams)
    return app
