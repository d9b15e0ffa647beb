"""The running sidecar: listeners, background loops and an orderly stop.

Listeners: the API on a Unix socket (mode 0660), optionally the same API on a
loopback TCP port, and ``/metrics`` + ``/health`` + ``/ready`` on their own TCP
port for Prometheus and kubelet probes. Stopping (SIGTERM) stops accepting,
lets in-flight requests finish within the drain time, ends the watch streams,
waits for S3 calls already started, and removes the socket file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import logging
import os
import socket
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from amfs_s3.adapter import S3Adapter
from amfs_s3.config import S3Settings, read_credentials_dir
from amfs_s3.exceptions import ConfigError
from amfs_s3.journal import DEFAULT_LOOKBACK_MS
from amfs_sidecar import __version__, lograte
from amfs_sidecar.api import CTX, ApiContext, add_probe_routes, build_app, default_agent_id
from amfs_sidecar.connections import (
    ACCEPT_BATCHES_IN_FLIGHT,
    API_BACKLOG,
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_KEEPALIVE_TIMEOUT,
    LINGER_SECONDS,
    METRICS_BACKLOG,
    METRICS_MAX_CONNECTIONS,
    REFUSAL_LINGER_SLOTS,
    ConnectionGuard,
    GuardedAppRunner,
    widen_listen_queue,
)
from amfs_sidecar.credentials import DEFAULT_CHECK_SECONDS, CredentialsWatcher
from amfs_sidecar.exceptions import SocketInUseError
from amfs_sidecar.fdbudget import connection_budget, descriptor_reserve, nofile_soft_limit
from amfs_sidecar.index import EntryIndex, ValueCache
from amfs_sidecar.logs import fields
from amfs_sidecar.metrics import SidecarMetrics
from amfs_sidecar.socketdir import check_socket_dir
from amfs_sidecar.stream import (
    DEFAULT_HEARTBEAT_SECONDS,
    DEFAULT_QUEUE_BYTES,
    DEFAULT_WRITE_TIMEOUT_SECONDS,
    StreamHub,
)
from amfs_sidecar.sync import SCAN_PAGES_PER_INTERVAL, Synchronizer

logger = logging.getLogger(__name__)

DEFAULT_SOCKET = "/var/run/amfs/amfs.sock"
DEFAULT_METRICS_PORT = 9464
SOCKET_MODE = 0o660


@dataclass
class SidecarConfig:
    settings: S3Settings
    socket_path: Path = Path(DEFAULT_SOCKET)
    listen: tuple[str, int] | None = None
    metrics_host: str = "0.0.0.0"
    metrics_port: int | None = DEFAULT_METRICS_PORT  # None: no metrics listener; 0: any port
    max_entry_bytes: int = 1024 * 1024
    cache_bytes: int = 64 * 1024 * 1024
    drain_seconds: float = 10.0
    read_only: bool = False
    credentials_dir: Path | None = None
    credentials_check_seconds: float = DEFAULT_CHECK_SECONDS
    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS
    workers: int = 16
    lookback_ms: int = DEFAULT_LOOKBACK_MS
    writer_id: str | None = None
    agent_id: str | None = None  # who writes when a request names no one; None: the hostname
    adapter_options: dict[str, Any] = field(default_factory=dict)
    allow_insecure_socket_dir: bool = False
    stream_queue_bytes: int = DEFAULT_QUEUE_BYTES
    stream_write_timeout: float = DEFAULT_WRITE_TIMEOUT_SECONDS
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_connections: int | None = None  # None: the default, lowered to fit RLIMIT_NOFILE
    index_snapshot: bool = True  # False: every sidecar scans entries/ (bench comparison)
    scan_pages: int = SCAN_PAGES_PER_INTERVAL  # the lease holder's LIST pages per interval
    memory_limit_bytes: int | None = None  # the container's, for the metric; None: unknown


def parse_listen(value: str) -> tuple[str, int]:
    """``127.0.0.1:8741`` → (host, port); only loopback: the API has no authentication."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--listen {value!r} must be HOST:PORT, e.g. 127.0.0.1:8741")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ConfigError(
            f"--listen host {host!r} is not a loopback address; the API has no authentication, "
            "so it may only listen on 127.0.0.1, ::1 or localhost"
        )
    return host, int(port)


def _socket_is_live(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
        return True
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    finally:
        probe.close()


def bind_unix_socket(path: Path, mode: int = SOCKET_MODE, *,
                     allow_insecure_dir: bool = False) -> socket.socket:
    """A listening-ready socket at *path* with *mode*, replacing a stale socket file.

    The socket is bound under a temporary name, given its mode, then renamed over
    *path*, so no client ever sees it with looser permissions and a stale file is
    replaced atomically. A path served by a live process, or a path that is not a
    socket, is never touched. A directory others could tamper with is refused
    (:mod:`amfs_sidecar.socketdir`) unless *allow_insecure_dir*.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    check_socket_dir(path.parent, allow_insecure=allow_insecure_dir)
    if path.is_symlink() or path.exists():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise SocketInUseError(f"{path} exists and is not a socket; refusing to replace it")
        if _socket_is_live(path):
            raise SocketInUseError(
                f"{path} is served by another live process (another sidecar?); refusing to start"
            )
        logger.info("replacing stale socket file", extra=fields(socket=str(path)))
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(temporary))
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except OSError:
        sock.close()
        temporary.unlink(missing_ok=True)
        raise
    sock.setblocking(False)
    return sock


class Sidecar:
    """One sidecar process's worth of state; ``start()``, then ``stop()``."""

    def __init__(self, config: SidecarConfig, metrics: SidecarMetrics | None = None) -> None:
        self.config = config
        # Standalone (no injector env): the memory is known by its AMFS namespace.
        self.metrics = metrics or SidecarMetrics.from_env(
            default_memory=config.settings.namespace)
        self.metrics.set_memory_limit(config.memory_limit_bytes)
        self.draining = False
        self.api_url: str | None = None
        self.metrics_url: str | None = None
        self._runners: list[web.AppRunner] = []
        self._socket_inode: int | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._credentials: CredentialsWatcher | None = None
        self.adapter: S3Adapter | None = None
        self.sync: Synchronizer | None = None
        self.ctx: ApiContext | None = None

    # -- pieces --------------------------------------------------------------

    def _settings(self) -> S3Settings:
        settings = self.config.settings
        if self.config.credentials_dir is not None:
            found = read_credentials_dir(self.config.credentials_dir)
            if found:
                settings = settings.model_copy(update=found)
        return settings

    def _offload(self) -> Callable[..., Any]:
        executor = self._executor
        assert executor is not None

        async def offload(fn: Callable[..., Any], *args: Any) -> Any:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(executor, functools.partial(fn, *args))

        return offload

    def _build(self) -> ApiContext:
        cfg = self.config
        self._executor = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="amfs-api")
        adapter = S3Adapter.from_settings(
            self._settings(),
            request_observer=self.metrics.count_s3_request,
            writer_id=cfg.writer_id,
            max_workers=cfg.workers,
            body_cache_bytes=0,  # the sidecar's own ValueCache holds what it serves
            **cfg.adapter_options,
        )
        index = EntryIndex()
        cache = ValueCache(cfg.cache_bytes)
        hub = StreamHub(max_queue_bytes=cfg.stream_queue_bytes,
                        write_timeout=cfg.stream_write_timeout)
        offload = self._offload()
        sync = Synchronizer(
            adapter, index, cache, hub, self.metrics, offload,
            poll_interval=adapter.settings.poll_interval,
            resync_interval=adapter.settings.resync_interval,
            lookback_ms=cfg.lookback_ms,
            index_snapshot=cfg.index_snapshot,
            scan_pages=cfg.scan_pages,
        )
        self.metrics.bind_objects(index.count)
        self.metrics.bind_watchers(lambda: len(hub))
        self.metrics.set_poll_interval(adapter.settings.poll_interval)
        self.adapter, self.sync = adapter, sync
        return ApiContext(
            adapter=adapter, index=index, cache=cache, hub=hub, sync=sync,
            metrics=self.metrics, offload=offload, max_entry_bytes=cfg.max_entry_bytes,
            body_timeout=cfg.body_timeout,
            read_only=cfg.read_only, heartbeat=cfg.heartbeat_seconds, version=__version__,
            agent_id=cfg.agent_id or default_agent_id(),
        )

    def _metrics_app(self, ctx: ApiContext) -> web.Application:
        app = web.Application()
        app[CTX] = ctx

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(body=self.metrics.render(),
                                headers={"Content-Type": "text/plain; version=0.0.4"})

        app.router.add_get("/metrics", metrics)
        add_probe_routes(app)
        return app

    def api_connection_limit(self) -> int:
        """--max-connections, lowered so S3, logs and the metrics port keep descriptors."""
        cfg = self.config
        listeners = 2 if cfg.listen is not None else 1
        reserve = descriptor_reserve(
            s3_connections=max(cfg.workers * 2, 10),  # the adapter's max_pool_connections
            accept_burst=ACCEPT_BATCHES_IN_FLIGHT * (listeners * API_BACKLOG + METRICS_BACKLOG),
            other_connections=METRICS_MAX_CONNECTIONS,
            lingering_refusals=2 * REFUSAL_LINGER_SLOTS,
        )
        soft = nofile_soft_limit()
        limit = connection_budget(cfg.max_connections, soft, reserve)
        if cfg.max_connections is not None and limit < cfg.max_connections:
            logger.warning("max connections lowered to fit the descriptor limit", extra=fields(
                max_connections=cfg.max_connections, limit=limit, rlimit_nofile=soft,
                reserved=reserve))
        return limit

    def _guard(self, listener: str, limit: int) -> ConnectionGuard:
        guard = ConnectionGuard(listener, limit=limit, header_timeout=self.config.header_timeout,
                                observer=self.metrics.count_connection_closed)
        self.metrics.bind_connections(listener, lambda: guard.active)
        return guard

    async def _start_runner(self, app: web.Application, guard: ConnectionGuard
                            ) -> web.AppRunner:
        runner = GuardedAppRunner(app, guard, access_log=None,
                                  shutdown_timeout=self.config.drain_seconds,
                                  keepalive_timeout=self.config.keepalive_timeout,
                                  lingering_time=LINGER_SECONDS)
        await runner.setup()
        self._runners.append(runner)
        return runner

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        # Refuse early, before any S3 client exists, if the socket is someone else's.
        sock = bind_unix_socket(cfg.socket_path,
                                allow_insecure_dir=cfg.allow_insecure_socket_dir)
        lograte.install()
        max_connections = self.api_connection_limit()
        try:
            self._socket_inode = os.stat(cfg.socket_path).st_ino
            ctx = self.ctx = self._build()
            api_runner = await self._start_runner(build_app(ctx),
                                                  self._guard("api", max_connections))
            unix_site = web.SockSite(api_runner, sock, backlog=API_BACKLOG)
            await unix_site.start()
            widen_listen_queue(unix_site)
            if cfg.listen is not None:
                site = web.TCPSite(api_runner, cfg.listen[0], cfg.listen[1],
                                   backlog=API_BACKLOG)
                await site.start()
                widen_listen_queue(site)
                self.api_url = _site_url(site)
            if cfg.metrics_port is not None:
                metrics_runner = await self._start_runner(
                    self._metrics_app(ctx), self._guard("metrics", METRICS_MAX_CONNECTIONS))
                site = web.TCPSite(metrics_runner, cfg.metrics_host, cfg.metrics_port,
                                   backlog=METRICS_BACKLOG)
                await site.start()
                widen_listen_queue(site)
                self.metrics_url = _site_url(site)
        except BaseException:
            sock.close()
            await self._close_listeners()
            self._remove_socket()
            raise
        ctx.sync.start()
        if cfg.credentials_dir is not None:
            self._credentials = CredentialsWatcher(
                cfg.credentials_dir, self._apply_credentials,
                interval=cfg.credentials_check_seconds,
            )
            self._credentials.start()
        logger.info("sidecar listening", extra=fields(
            socket=str(cfg.socket_path), tcp=self.api_url, metrics=self.metrics_url,
            bucket=ctx.adapter.settings.bucket, prefix=ctx.adapter.settings.prefix,
            namespace=ctx.adapter.settings.namespace, read_only=cfg.read_only,
            max_connections=max_connections, header_timeout=cfg.header_timeout,
            keepalive_timeout=cfg.keepalive_timeout, body_timeout=cfg.body_timeout,
        ))

    async def _apply_credentials(self, key_id: str | None, secret: str | None) -> None:
        assert self.ctx is not None
        await self.ctx.offload(self.ctx.adapter.update_credentials, key_id, secret)

    async def stop(self) -> None:
        """Graceful stop; safe to call more than once."""
        if self.draining:
            return
        self.draining = True
        logger.info("stopping: draining in-flight requests",
                    extra=fields(drain_seconds=self.config.drain_seconds))
        # New clients fail fast instead of queueing on a listener about to close.
        self._remove_socket()
        if self.ctx is not None:
            self.ctx.draining = True  # /ready answers 503 from here on
        await self._close_listeners()
        if self._credentials is not None:
            await self._credentials.stop()
        if self.sync is not None:
            await self.sync.stop()
        if self._executor is not None:
            # S3 calls already started (a write whose client gave up) still complete.
            await asyncio.get_running_loop().run_in_executor(
                None, functools.partial(self._executor.shutdown, wait=True)
            )
        if self.adapter is not None:
            self.adapter.close()
        lograte.install().flush(logger)
        logger.info("stopped")

    async def _close_listeners(self) -> None:
        for runner in self._runners:
            with contextlib.suppress(Exception):
                await runner.cleanup()
        self._runners.clear()

    def _remove_socket(self) -> None:
        path = self.config.socket_path
        try:
            if self._socket_inode is not None and os.stat(path).st_ino == self._socket_inode:
                path.unlink()
        except FileNotFoundError:
            pass
        self._socket_inode = None

    async def run(self, stop: asyncio.Event) -> None:
        """Start, serve until *stop* is set, then stop gracefully."""
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()


def _site_url(site: web.TCPSite) -> str:
    server = site._server  # aiohttp exposes the bound port only through the server
    sockets = getattr(server, "sockets", None) or []
    if sockets:
        host, port = sockets[0].getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"
    return site.name
