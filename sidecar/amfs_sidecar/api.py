"""The sidecar's HTTP routes, and the one place errors become HTTP statuses.

Handlers parse and validate (pydantic models from :mod:`amfs_sidecar.models`),
answer from the index and cache where they can, and hand anything that talks
to S3 to the worker pool (``offload``) so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from amfs_core.abc import AdapterABC, WatchHandle
from amfs_core.exceptions import AdapterError, AMFSError, VersionConflictError
from amfs_core.models import MemoryEntry, OutcomeRecord, SearchQuery
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ValidationError

from amfs_s3.adapter import S3Adapter
from amfs_s3.exceptions import InvalidNameError
from amfs_s3.layout import validate_entity_path, validate_key, validate_outcome_ref
from amfs_sidecar import models
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
# Room for JSON framing around an entry at the maximum size (escaping can grow it).
BODY_OVERHEAD_BYTES = 64 * 1024


class ApiError(Exception):
    """An error the API answers with *status* and ``{"detail": ...}``."""

    def __init__(self, status: int, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extra = extra


class ReadOnlyError(ApiError):
    def __init__(self) -> None:
        super().__init__(403, "this sidecar is read-only (--read-only): writes are refused")


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
    read_only: bool = False
    heartbeat: float = DEFAULT_HEARTBEAT_SECONDS
    version: str = "0.1.0"
    draining: bool = False
    write_locks: KeyLocks = field(default_factory=KeyLocks)


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
        return error_response(exc.status, exc.detail, **exc.extra)
    if isinstance(exc, ValidationError):
        text, errors = _validation_detail(exc)
        return error_response(422, text, type="ValidationError", errors=errors)
    if isinstance(exc, InvalidNameError):
        return error_response(400, str(exc), type="InvalidNameError", field=exc.field,
                              rule=exc.rule)
    if isinstance(exc, EntryTooLargeError):
        return error_response(413, str(exc), type="EntryTooLargeError", size=exc.size,
                              limit=exc.limit)
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
    except Exception as exc:
        response = map_exception(exc)
    if route != STREAM_ROUTE or response.status >= 400:
        request.app[CTX].metrics.observe_request(
            route, response.status, time.perf_counter() - started
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
    try:
        raw = await request.read()
    except web.RequestPayloadError as exc:  # e.g. a Content-Encoding the body does not match
        reason = " ".join(str(exc).split()).removeprefix("400, message: ")
        raise ApiError(400, f"request body could not be read: {reason}") from None
    try:
        data = json.loads(raw)
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


def _entry_name(request: web.Request) -> tuple[str, str]:
    path = request.match_info["path"]
    if "/" not in path:
        raise ApiError(400, f"path must name an entity and a key: .../{{entity_path}}/{{key}}, "
                            f"got {path!r}")
    entity_path, key = path.rsplit("/", 1)
    return validate_entity_path(entity_path), validate_key(key)


def _check_size(body: bytes, limit: int) -> None:
    if len(body) > limit:
        raise EntryTooLargeError(len(body), limit)


def _json_bytes(data: bytes) -> web.Response:
    return web.Response(body=data, content_type="application/json")


def _entries_json(bodies: list[bytes], next_cursor: str | None = None) -> web.Response:
    cursor = json.dumps(next_cursor).encode()
    return _json_bytes(b'{"entries":[' + b",".join(bodies) + b'],"next_cursor":' + cursor + b"}")


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
    ctx = request.app[CTX]
    entity_path, key = _entry_name(request)
    params = _query(request, models.ReadParams)
    if params.version is not None:
        body = await ctx.sync.entry_body(entity_path, key, params.version)
        if body is None:
            raise ApiError(404, f"{entity_path}/{key} has no version {params.version}")
        return _json_bytes(body)
    entry = await _current(ctx, entity_path, key, params.consistent)
    if isinstance(entry, MemoryEntry) and (
        entry.confidence < params.min_confidence or entry.is_expired()
    ):
        entry = None
    if entry is None:
        raise ApiError(404, f"no entry {entity_path}/{key}")
    cached = ctx.cache.peek(entity_path, key)
    if cached is not None and cached.entry is entry:
        return _json_bytes(cached.body)
    return _json_bytes(encode_entry(entry))


async def write_entry(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    if ctx.read_only:
        raise ReadOnlyError()
    data = await _json_object(request)
    if "entry" in data:
        entry = models.EntryWriteRequest.model_validate(data).entry
    else:
        entry = models.WriteRequest.model_validate(data).to_entry()
    validate_entity_path(entry.entity_path)
    validate_key(entry.key)
    _check_size(encode_entry(entry), ctx.max_entry_bytes)
    # One write per key at a time from this sidecar: its versions then reach the
    # streams in order (concurrent writes would publish 14 before 13), and they
    # do not race each other for the next version number on S3.
    async with ctx.write_locks.hold((entry.entity_path, entry.key)):
        written, change = await ctx.offload(ctx.adapter.write_with_change, entry)
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


async def list_entries(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    params = _query(request, models.ListParams)
    scope = params.entity_path if params.entity_path not in (None, "", "*") else None
    if scope is not None:
        validate_entity_path(scope)
    after = _decode_cursor(params.cursor) if params.cursor else None
    if params.include_superseded or not ctx.index.synced:
        # Every version (or no index yet): the listing has to come from S3.
        entries: list[MemoryEntry] = await ctx.offload(
            lambda: ctx.adapter.list(scope, include_superseded=params.include_superseded,
                                     subtree=params.subtree)
        )
        entries.sort(key=lambda e: (e.entity_path, e.key, e.version))
        if after is not None:
            entries = [e for e in entries if (e.entity_path, e.key, e.version) > after]
        page = entries[: params.limit]
        more = len(entries) > params.limit
        last = (page[-1].entity_path, page[-1].key, page[-1].version) if page else None
        return _entries_json([encode_entry(e) for e in page],
                             _encode_cursor(last) if more and last else None)
    names = ctx.index.names(scope, subtree=params.subtree)
    if after is not None:
        names = [n for n in names if n > after]
    page_names = names[: params.limit]
    more = len(names) > params.limit
    bodies = [b for b in await _bodies(ctx, page_names) if b is not None]
    return _entries_json(bodies, _encode_cursor(page_names[-1]) if more else None)


async def history(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    entity_path, key = _entry_name(request)
    versions: list[MemoryEntry] = await ctx.offload(ctx.adapter.history, entity_path, key)
    if not versions:
        raise ApiError(404, f"no entry {entity_path}/{key}")
    return _entries_json([encode_entry(e) for e in versions])


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
    return _json_bytes(b'{"entries":[' + b",".join(encode_entry(e) for e in results) + b"]}")


# -- outcomes ------------------------------------------------------------------


async def commit_outcome(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    if ctx.read_only:
        raise ReadOnlyError()
    data = await _json_object(request)
    if "record" in data:
        record = models.OutcomeRecordRequest.model_validate(data).record
    else:
        record = models.OutcomeRequest.model_validate(data).to_record()
    validate_outcome_ref(record.outcome_ref)
    _check_size(record.model_dump_json().encode(), ctx.max_entry_bytes)
    updated, changes = await ctx.offload(ctx.adapter.commit_outcome_with_changes, record)
    ctx.index.add_outcome()
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
    result = models.OutcomeCommitted(outcome=record, updated=updated)
    return web.Response(body=result.model_dump_json(), status=201,
                        content_type="application/json")


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


async def stats(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    body = models.Stats(
        entries=ctx.index.count("entries"),
        versions=ctx.index.count("versions"),
        outcomes=ctx.index.count("outcomes"),
        entities=ctx.index.entity_count(),
        watchers=len(ctx.hub),
        synced=ctx.index.synced,
        conditional_writes_supported=ctx.sync.conditional_writes,
        last_poll_success_unix=ctx.sync.last_poll_success,
        cache=models.CacheStats(**ctx.cache.stats()),
    )
    return web.json_response(body.model_dump())


async def stream(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    params = _query(request, models.StreamParams)
    if params.entity_path not in ("", "*"):
        validate_entity_path(params.entity_path)
    last_event_id = request.headers.get("Last-Event-ID") or None
    if last_event_id is not None and ctx.adapter.layout.parse_journal_key(last_event_id) is None:
        raise ApiError(400, f"Last-Event-ID {last_event_id!r} is not an event id of this memory "
                            f"(ids are journal keys under {ctx.adapter.layout.journal_root})")
    started = time.perf_counter()
    return await serve_stream(
        request, ctx.hub, scope=params.entity_path, last_event_id=last_event_id,
        replay=ctx.sync.replay, heartbeat=ctx.heartbeat,
        on_prepared=lambda: ctx.metrics.observe_request(
            STREAM_ROUTE, 200, time.perf_counter() - started),
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
    app.router.add_get("/api/v1/entries/{path:.+}", read_entry)
    app.router.add_post("/api/v1/entries", write_entry)
    app.router.add_get("/api/v1/entries", list_entries)
    app.router.add_get("/api/v1/history/{path:.+}", history)
    app.router.add_post("/api/v1/search", search)
    app.router.add_post("/api/v1/outcomes", commit_outcome)
    app.router.add_get("/api/v1/outcomes", list_outcomes)
    app.router.add_get("/api/v1/stats", stats)
    app.router.add_get(STREAM_ROUTE, stream)

    async def close_streams(_: web.Application) -> None:
        ctx.hub.close_all()

    app.on_shutdown.append(close_streams)
    return app
