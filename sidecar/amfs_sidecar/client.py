"""``SidecarAdapter``: an AMFS adapter that talks to the pod's sidecar over its socket.

``AgentMemory(agent_id="a", adapter=SidecarAdapter())`` works in any pod the
operator injected: the socket path comes from ``AMFS_SOCKET``. The transport is
``http.client`` over ``AF_UNIX`` (or TCP with ``base_url=``): standard library
only, one keep-alive connection per thread. ``watch()`` reads the sidecar's SSE
stream on a background thread and resumes with ``Last-Event-ID`` after a drop.
Errors from the sidecar come back as the matching AMFS exceptions.
"""

from __future__ import annotations

import builtins
import contextlib
import http.client
import json
import logging
import os
import re
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from amfs_core.abc import AdapterABC, WatchHandle
from amfs_core.exceptions import AMFSError, VersionConflictError
from amfs_core.models import MemoryEntry, OutcomeRecord, SearchQuery

from amfs_s3.exceptions import InvalidNameError
from amfs_sidecar.exceptions import (
    EntryTooLargeError,
    SidecarReadOnlyError,
    SidecarRequestError,
    SidecarUnavailableError,
)

logger = logging.getLogger(__name__)

ENV_SOCKET = "AMFS_SOCKET"
DEFAULT_SOCKET = "/var/run/amfs/amfs.sock"
PAGE_SIZE = 1000


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _entry_path(entity_path: str, key: str) -> str:
    segments = [quote(s, safe="") for s in entity_path.split("/")]
    return "/".join(segments) + "/" + quote(key, safe="")


def _entry_url(path_route: str, query_route: str, entity_path: str, key: str,
               params: dict[str, Any]) -> str:
    """The path form when it is unambiguous; the query form for a key holding '/'
    (the path's last segment is always the key), as upstream's HttpAdapter does."""
    if "/" in key:
        return query_route + _query({"entity_path": entity_path, "key": key, **params})
    return f"{path_route}/{_entry_path(entity_path, key)}" + _query(params)


def _entry_or_none(data: Any) -> MemoryEntry | None:
    """An entry body, or None for the API's ``{"status": "not_found"}`` answer."""
    if data is None or (isinstance(data, dict) and data.get("status") == "not_found"):
        return None
    return MemoryEntry.model_validate(data)


def _query(params: dict[str, Any]) -> str:
    clean = {
        k: ("true" if v is True else "false" if v is False else
            v.isoformat() if isinstance(v, datetime) else v)
        for k, v in params.items() if v is not None
    }
    return "?" + urlencode(clean) if clean else ""


class _Response:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class SidecarAdapter(AdapterABC):
    """AMFS adapter over the sidecar API (a Unix socket, or ``base_url`` for TCP)."""

    def __init__(self, socket_path: str | os.PathLike[str] | None = None, *,
                 base_url: str | None = None, timeout: float = 30.0) -> None:
        self.timeout = timeout
        if base_url is not None:
            parts = urlsplit(base_url)
            if parts.scheme != "http" or not parts.hostname:
                raise ValueError(f"base_url {base_url!r} must be http://HOST:PORT")
            self._tcp: tuple[str, int] | None = (parts.hostname, parts.port or 80)
            self.socket_path = None
        else:
            self._tcp = None
            self.socket_path = str(socket_path or os.environ.get(ENV_SOCKET) or DEFAULT_SOCKET)
        self._local = threading.local()
        self._watches: set[_Watch] = set()
        self._lock = threading.Lock()

    # -- transport -------------------------------------------------------------

    @property
    def where(self) -> str:
        return f"http://{self._tcp[0]}:{self._tcp[1]}" if self._tcp else f"unix:{self.socket_path}"

    def connect(self, timeout: float | None = None) -> http.client.HTTPConnection:
        """A new connection to the sidecar (one per thread is kept for requests)."""
        timeout = self.timeout if timeout is None else timeout
        if self._tcp is not None:
            return http.client.HTTPConnection(self._tcp[0], self._tcp[1], timeout=timeout)
        assert self.socket_path is not None
        return _UnixConnection(self.socket_path, timeout)

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, True
        conn = self.connect()
        self._local.conn = conn
        return conn, False

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def request(self, method: str, path: str, body: Any = None,
                extra_headers: dict[str, str] | None = None) -> _Response:
        """One request; a reused keep-alive connection that went stale is retried once."""
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        headers.update(extra_headers or {})
        for attempt in (1, 2):
            conn, reused = self._connection()
            try:
                conn.request(method, path, body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected) as exc:
                self._drop_connection()
                # A kept-alive connection the sidecar closed meanwhile: the request
                # never reached a handler, so sending it again is safe.
                if reused and attempt == 1:
                    continue
                raise SidecarUnavailableError(f"sidecar at {self.where} dropped the "
                                              f"connection: {exc}") from exc
            except OSError as exc:
                self._drop_connection()
                raise SidecarUnavailableError(
                    f"cannot reach the sidecar at {self.where}: {exc} "
                    f"(is the amfs-sidecar container running? AMFS_SOCKET={self.socket_path})"
                ) from exc
            if response.will_close:
                self._drop_connection()
            return _Response(response.status, data)
        raise AssertionError("unreachable")

    def _call(self, method: str, path: str, body: Any = None, *, none_on_404: bool = False,
              headers: dict[str, str] | None = None) -> Any:
        response = self.request(method, path, body, headers)
        if response.status < 300:
            return response.json()
        if response.status == 404 and none_on_404:
            return None
        raise self._error(response, body)

    @staticmethod
    def _error(response: _Response, sent: Any) -> Exception:
        try:
            info = response.json() or {}
        except ValueError:
            info = {}
        if not isinstance(info, dict):
            info = {}
        detail = str(info.get("detail") or response.body[:200].decode(errors="replace"))
        status = response.status
        kind = info.get("type")
        if status == 409 and kind == "VersionConflictError":
            return VersionConflictError(info["entity_path"], info["key"], info["expected"],
                                        info["actual"])
        if status == 413:
            size, limit = info.get("size"), info.get("limit")
            if size is None:  # refused by the HTTP layer before any handler ran
                numbers = [int(n) for n in re.findall(r"\d+", detail)]
                limit = numbers[0] if numbers else 0
                size = len(json.dumps(sent).encode()) if sent is not None else 0
            return EntryTooLargeError(int(size), int(limit or 0))
        if status == 400 and kind == "InvalidNameError":
            field, rule = str(info.get("field")), str(info.get("rule"))
            problem = detail.removeprefix(f"{field} ").removesuffix(f" ({rule})")
            return InvalidNameError(field, problem, rule)
        if status in (400, 422):
            return SidecarRequestError(status, detail)
        if status == 403:
            return SidecarReadOnlyError(detail)
        if status == 404:
            return AMFSError(detail)
        return SidecarUnavailableError(f"sidecar answered HTTP {status}: {detail}")

    # -- AdapterABC ------------------------------------------------------------

    def read(self, entity_path: str, key: str, *, min_confidence: float = 0.0,
             branch: str = "main", consistent: bool = False) -> MemoryEntry | None:
        params = {"min_confidence": min_confidence or None, "consistent": consistent or None}
        return _entry_or_none(self._call("GET", _entry_url(
            "/api/v1/entries", "/api/v1/entry", entity_path, key, params)))

    def read_at_version(self, entity_path: str, key: str, version: int) -> MemoryEntry | None:
        return _entry_or_none(self._call("GET", _entry_url(
            "/api/v1/entries", "/api/v1/entry", entity_path, key, {"version": version})))

    def write(self, entry: MemoryEntry, *, idempotency_key: str | None = None) -> MemoryEntry:
        """Store *entry* as the adapter would: version > 1 is the version to create.
        With *idempotency_key*, a retry returns the first write's version."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        data = self._call("POST", "/api/v1/entries", {"entry": entry.model_dump(mode="json")},
                          headers=headers)
        return MemoryEntry.model_validate(data)

    def _pages(self, params: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
        cursor = None
        while True:
            data = self._call("GET", "/api/v1/entries" + _query({**params, "cursor": cursor}))
            yield data["entries"]
            cursor = data.get("next_cursor")
            if not cursor:
                return

    def list(self, entity_path: str | None = None, *, include_superseded: bool = False,
             branch: str = "main", subtree: bool = False) -> list[MemoryEntry]:
        params = {"entity_path": entity_path, "include_superseded": include_superseded or None,
                  "subtree": subtree or None, "limit": PAGE_SIZE}
        return [MemoryEntry.model_validate(e) for page in self._pages(params) for e in page]

    def history(self, entity_path: str, key: str) -> builtins.list[MemoryEntry]:
        data = self._call("GET", _entry_url("/api/v1/history", "/api/v1/history",
                                            entity_path, key, {}))
        return [MemoryEntry.model_validate(e) for e in data["versions"]]

    def search(self, query: SearchQuery, **_: Any) -> builtins.list[MemoryEntry]:
        """AMFS search semantics, evaluated by the sidecar over its index."""
        body = query.model_dump(mode="json", exclude={"recall_config", "depth"})
        if query.recall_config is not None:
            # With recall_config the SDK scores the text itself; the adapter must not filter.
            body["query"] = None
        body["limit"] = max(1, min(int(body.get("limit") or 100), 1000))
        data = self._call("POST", "/api/v1/search", body)  # a bare list, as upstream
        return [MemoryEntry.model_validate(e) for e in data]

    def commit_outcome(self, record: OutcomeRecord) -> builtins.list[MemoryEntry]:
        data = self._call("POST", "/api/v1/outcomes", {"record": record.model_dump(mode="json")})
        return [MemoryEntry.model_validate(e) for e in data["entries"]]

    def list_outcomes(
        self, *, entity_path: str | None = None, since: datetime | None = None,
        limit: int = 1000, outcome_ref: str | None = None,
    ) -> builtins.list[OutcomeRecord]:
        params = {"entity_path": entity_path, "since": since, "limit": max(1, min(limit, 1000)),
                  "outcome_ref": outcome_ref}
        data = self._call("GET", "/api/v1/outcomes" + _query(params))
        return [OutcomeRecord.model_validate(r) for r in data["outcomes"]]

    def get_outcome(self, outcome_ref: str) -> OutcomeRecord | None:
        found = self.list_outcomes(outcome_ref=outcome_ref, limit=1)
        return found[0] if found else None

    def count_outcomes(self, *, entity_path: str | None = None,
                       since: datetime | None = None) -> int:
        if entity_path is None and since is None:
            return int(self.sidecar_stats()["outcomes"])
        return len(self.list_outcomes(entity_path=entity_path, since=since))

    def sidecar_stats(self) -> dict[str, Any]:
        """The sidecar's own counters (``GET /api/v1/stats``)."""
        result: dict[str, Any] = self._call("GET", "/api/v1/stats")
        return result

    def watch(self, entity_path: str, callback: Callable[[MemoryEntry], None]) -> WatchHandle:
        """Call *callback* for every new version under *entity_path* (subtree; '*' = all).

        Returns once the stream is open, so a write made after this call is seen.
        """
        watch = _Watch(self, entity_path or "*", callback)
        watch.open_first()
        with self._lock:
            self._watches.add(watch)
        watch.start()

        def cancel() -> None:
            watch.cancel()
            with self._lock:
                self._watches.discard(watch)

        return WatchHandle(cancel)

    def close(self) -> None:
        with self._lock:
            watches = list(self._watches)
            self._watches.clear()
        for watch in watches:
            watch.cancel()
        self._drop_connection()


# A resume may repeat events the watch had (the same entity, key and version):
# the names delivered lately are remembered, so a callback sees each once.
_REMEMBER_DELIVERED = 10_000


class _Watch(threading.Thread):
    """One SSE stream, reconnecting with Last-Event-ID until cancelled."""

    def __init__(self, adapter: SidecarAdapter, scope: str,
                 callback: Callable[[MemoryEntry], None]) -> None:
        super().__init__(name=f"amfs-watch-{scope}", daemon=True)
        self.adapter = adapter
        self.scope = scope
        self.callback = callback
        self.last_event_id: str | None = None
        self._delivered: OrderedDict[tuple[str, str, int], None] = OrderedDict()
        self._cancelled = threading.Event()
        self._conn: http.client.HTTPConnection | None = None
        self._response: http.client.HTTPResponse | None = None

    def _open(self) -> None:
        # Heartbeats arrive every 15 s by default; silence for 4x that is a dead peer.
        conn = self.adapter.connect(timeout=60.0)
        headers = {"Accept": "text/event-stream"}
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        conn.request("GET", "/api/v1/stream" + _query({"entity_path": self.scope}),
                     headers=headers)
        response = conn.getresponse()
        if response.status != 200:
            error = SidecarAdapter._error(_Response(response.status, response.read()), None)
            conn.close()
            raise error
        self._conn, self._response = conn, response
        # The server writes ': connected' once it has subscribed.
        for line in iter(response.readline, b""):
            if line.startswith(b": connected"):
                return
        raise SidecarUnavailableError("watch stream closed before it opened")

    def open_first(self) -> None:
        try:
            self._open()
        except OSError as exc:
            raise SidecarUnavailableError(
                f"cannot open a watch on the sidecar at {self.adapter.where}: {exc}"
            ) from exc

    def run(self) -> None:
        delay = 0.2
        while not self._cancelled.is_set():
            try:
                if self._response is None:
                    self._open()
                    delay = 0.2
                self._read()
            except Exception as exc:
                if self._cancelled.is_set():
                    break
                logger.info("watch stream interrupted; reconnecting: %s", exc)
            self._close()
            if self._cancelled.wait(delay):
                break
            delay = min(delay * 2, 5.0)

    def _read(self) -> None:
        assert self._response is not None
        event, event_id = "message", None
        data: builtins.list[str] = []
        for raw in iter(self._response.readline, b""):
            line = raw.decode("utf-8").rstrip("\r\n")
            if line == "":
                if data:
                    self._dispatch(event, "\n".join(data), event_id)
                event, data, event_id = "message", [], None
            elif line.startswith(":"):
                continue
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
                elif name == "id":
                    event_id = value

    def _dispatch(self, event: str, data: str, event_id: str | None) -> None:
        if event_id:
            self.last_event_id = event_id
        if event == "reset":
            # A position the sidecar could not resume: changes may have been
            # missed, and a watch callback has no way to re-read. Say so.
            logger.warning("watch stream reset by the sidecar: %s", data)
            return
        if event != "write" or self._cancelled.is_set():
            return
        try:
            entry = MemoryEntry.model_validate_json(data)
            name = (entry.entity_path, entry.key, entry.version)
            if name in self._delivered:
                return
            self._delivered[name] = None
            if len(self._delivered) > _REMEMBER_DELIVERED:
                self._delivered.popitem(last=False)
            self.callback(entry)
        except Exception:
            logger.exception("watch callback failed")

    def _close(self) -> None:
        conn, self._conn, self._response = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(OSError):
                if conn.sock is not None:
                    conn.sock.shutdown(socket.SHUT_RDWR)
            conn.close()

    def cancel(self) -> None:
        self._cancelled.set()
        self._close()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=5)
