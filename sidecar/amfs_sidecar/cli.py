"""``amfs-sidecar``: parse flags (env and the AMFS YAML as fallbacks) and run the sidecar."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from amfs_s3 import config as amfs_config
from amfs_s3.config import S3Settings
from amfs_s3.exceptions import ConfigError
from amfs_sidecar import check_storage, logs
from amfs_sidecar.connections import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_KEEPALIVE_TIMEOUT,
)
from amfs_sidecar.fdbudget import DEFAULT_MAX_CONNECTIONS
from amfs_sidecar.logs import fields
from amfs_sidecar.server import (
    DEFAULT_METRICS_PORT,
    DEFAULT_SOCKET,
    Sidecar,
    SidecarConfig,
    parse_listen,
)
from amfs_sidecar.stream import DEFAULT_QUEUE_BYTES, DEFAULT_WRITE_TIMEOUT_SECONDS
from amfs_sidecar.sync import SCAN_PAGES_PER_INTERVAL

logger = logging.getLogger("amfs_sidecar")

ENV_SOCKET = "AMFS_SOCKET"
ENV_CREDENTIALS_DIR = "AMFS_CREDENTIALS_DIR"
ENV_METRICS_PORT = "AMFS_METRICS_PORT"
ENV_AGENT_ID = "AMFS_AGENT_ID"
ENV_ALLOW_INSECURE_SOCKET_DIR = "AMFS_ALLOW_INSECURE_SOCKET_DIR"
ENV_MEMORY_LIMIT = "AMFS_MEMORY_LIMIT_BYTES"
EMBEDDED_SOCKET = "./.run/amfs.sock"


def listen_address(value: str) -> tuple[str, int]:
    """``--listen``'s type: argparse shows an ArgumentTypeError's text, and only that."""
    try:
        return parse_listen(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _env_flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="amfs-sidecar",
        description="AMFS memory on S3 for the agents of one pod, over a Unix-socket HTTP API. "
                    "`amfs-sidecar check-storage --help`: check an S3 provider first.",
    )
    p.add_argument("--config", type=Path, default=env.get(amfs_config.ENV_CONFIG_FILE) or None,
                   help="AMFS YAML file (env AMFS_CONFIG); without it, AMFS_S3_* env variables")
    p.add_argument("--credentials-dir", type=Path, default=env.get(ENV_CREDENTIALS_DIR) or None,
                   help="mounted Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY files; "
                        "re-read when they change (env AMFS_CREDENTIALS_DIR)")
    p.add_argument("--socket", type=Path, default=None,
                   help=f"Unix socket path (env AMFS_SOCKET, default {DEFAULT_SOCKET}; "
                        f"{EMBEDDED_SOCKET} with --embedded-s3)")
    p.add_argument("--allow-insecure-socket-dir", action="store_true",
                   default=_env_flag(env, ENV_ALLOW_INSECURE_SOCKET_DIR),
                   help="accept a socket directory others may write (world-writable without "
                        "the sticky bit) or one reached through an untrusted symlink; for a "
                        "directory only trusted processes see, like a pod's emptyDir "
                        "(env AMFS_ALLOW_INSECURE_SOCKET_DIR=true)")
    p.add_argument("--listen", type=listen_address, default=None, metavar="HOST:PORT",
                   help="also serve the API on this loopback TCP address, e.g. 127.0.0.1:8741")
    p.add_argument("--metrics-port", type=int,
                   default=int(env.get(ENV_METRICS_PORT) or DEFAULT_METRICS_PORT),
                   help="TCP port for /metrics, /health and /ready (env AMFS_METRICS_PORT; "
                        "0 = any free port)")
    p.add_argument("--metrics-host", default=None,
                   help="address for the metrics port (default 0.0.0.0, for Prometheus in a "
                        "pod; 127.0.0.1 with --embedded-s3, a job on your own machine)")
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("--log-level", default="INFO",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR", "debug", "info", "warning",
                            "error"))
    p.add_argument("--poll-interval", type=float, default=None, metavar="SECONDS",
                   help="journal poll interval (default: config, else 5)")
    p.add_argument("--resync-interval", type=float, default=None, metavar="SECONDS",
                   help="full resync interval (default: config, else 300)")
    p.add_argument("--s3-connect-timeout", type=float, default=None, metavar="SECONDS",
                   help="S3 connect timeout per attempt (env AMFS_S3_CONNECT_TIMEOUT, "
                        f"default {amfs_config.DEFAULT_CONNECT_TIMEOUT:g})")
    p.add_argument("--s3-read-timeout", type=float, default=None, metavar="SECONDS",
                   help="S3 read timeout per attempt (env AMFS_S3_READ_TIMEOUT, "
                        f"default {amfs_config.DEFAULT_READ_TIMEOUT:g})")
    p.add_argument("--s3-max-attempts", type=int, default=None, metavar="N",
                   help="S3 attempts per operation, the first included (env "
                        f"AMFS_S3_MAX_ATTEMPTS, default {amfs_config.DEFAULT_MAX_ATTEMPTS})")
    p.add_argument("--s3-operation-deadline", type=float, default=None, metavar="SECONDS",
                   help="total time one S3 operation may take, retries included; a hung S3 "
                        "turns /ready 503 within about --poll-interval plus this (env "
                        "AMFS_S3_OPERATION_DEADLINE, default "
                        f"{amfs_config.DEFAULT_OPERATION_DEADLINE:g}, at least connect + read "
                        "timeout)")
    p.add_argument("--max-entry-bytes", type=int, default=1024 * 1024,
                   help="largest serialised entry accepted (413 above it)")
    p.add_argument("--cache-bytes", type=int, default=64 * 1024 * 1024,
                   help="bound of the in-memory value cache")
    p.add_argument("--drain-seconds", type=float, default=10.0,
                   help="on SIGTERM, how long in-flight requests may take to finish")
    p.add_argument("--read-only", action="store_true", help="refuse writes and outcomes (403)")
    p.add_argument("--agent-id", default=env.get(ENV_AGENT_ID) or None, metavar="ID",
                   help="agent_id recorded for writes and outcomes that name none and send no "
                        f"X-AMFS-Agent-Id header (env {ENV_AGENT_ID}; default: the hostname)")
    p.add_argument("--embedded-s3", nargs="?", const="seaweedfs", default=None,
                   choices=("seaweedfs", "moto"), metavar="seaweedfs|moto",
                   help="start an S3 server on loopback, for trying things out: SeaweedFS "
                        "(the default) keeps the memory in ./.run/seaweedfs across restarts; "
                        "--embedded-s3=moto keeps it in memory only")
    p.add_argument("--heartbeat-seconds", type=float, default=15.0,
                   help="idle watch streams get a comment line this often")
    p.add_argument("--credentials-check-seconds", type=float, default=5.0,
                   help="how often --credentials-dir is re-read")
    p.add_argument("--stream-queue-bytes", type=int, default=DEFAULT_QUEUE_BYTES,
                   metavar="BYTES",
                   help="events one watch stream may have waiting (1,000 at most); a stream "
                        "past it ends with 'event: reset' naming the last id sent, and its "
                        f"client resumes with Last-Event-ID (default {DEFAULT_QUEUE_BYTES})")
    p.add_argument("--stream-write-timeout", type=float,
                   default=DEFAULT_WRITE_TIMEOUT_SECONDS, metavar="SECONDS",
                   help="a watch client that reads nothing for this long is disconnected "
                        f"(default {DEFAULT_WRITE_TIMEOUT_SECONDS:g})")
    p.add_argument("--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT,
                   metavar="SECONDS",
                   help="a connection must send a whole request head within this long of "
                        "connecting (or of the head's first byte, on a kept-alive "
                        f"connection); else 408 and closed (default {DEFAULT_HEADER_TIMEOUT:g})")
    p.add_argument("--body-timeout", type=float, default=DEFAULT_BODY_TIMEOUT,
                   metavar="SECONDS",
                   help="a request body must arrive whole within this long of its head; else "
                        f"408 and closed (default {DEFAULT_BODY_TIMEOUT:g})")
    p.add_argument("--keepalive-timeout", type=float, default=DEFAULT_KEEPALIVE_TIMEOUT,
                   metavar="SECONDS",
                   help="an idle keep-alive connection is closed after this long "
                        f"(default {DEFAULT_KEEPALIVE_TIMEOUT:g})")
    p.add_argument("--max-connections", type=int, default=None, metavar="N",
                   help="open API connections (socket and --listen together); more are "
                        "answered 503 and closed. Lowered to fit RLIMIT_NOFILE with room for "
                        f"S3 and the metrics port (default {DEFAULT_MAX_CONNECTIONS}, so lowered)")
    p.add_argument("--index-snapshot", choices=("on", "off"), default="on",
                   help="off: no lease, no snapshot, no journal trim; every sidecar lists "
                        "all of entries/ at start and every resync interval (the design "
                        "before the snapshot, kept for comparison; default on)")
    # A string default goes through type=int too: a bad env value is argparse's clear error.
    p.add_argument("--memory-limit-bytes", type=int, default=env.get(ENV_MEMORY_LIMIT) or None,
                   metavar="BYTES",
                   help="the container's memory limit, exported as amfs_sidecar_memory_limit_"
                        "bytes beside the sidecar's resident memory (env "
                        f"{ENV_MEMORY_LIMIT}, which the injector sets from limits.memory)")
    p.add_argument("--scan-pages", type=int, default=SCAN_PAGES_PER_INTERVAL, metavar="N",
                   help="LIST pages (1,000 keys each) of entries/ and of outcomes/ the lease "
                        "holder's rolling scan reads per resync interval: more find a write "
                        "that has no journal record sooner, at N requests more an interval "
                        f"(default {SCAN_PAGES_PER_INTERVAL})")
    return p


def _check_positive(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    rules: list[tuple[str, Any, bool]] = [
        ("--max-entry-bytes", args.max_entry_bytes, args.max_entry_bytes > 0),
        ("--cache-bytes", args.cache_bytes, args.cache_bytes >= 0),
        ("--drain-seconds", args.drain_seconds, args.drain_seconds >= 0),
        ("--heartbeat-seconds", args.heartbeat_seconds, args.heartbeat_seconds > 0),
        ("--credentials-check-seconds", args.credentials_check_seconds,
         args.credentials_check_seconds > 0),
        ("--metrics-port", args.metrics_port, 0 <= args.metrics_port <= 65535),
        ("--stream-queue-bytes", args.stream_queue_bytes, args.stream_queue_bytes > 0),
        ("--stream-write-timeout", args.stream_write_timeout, args.stream_write_timeout > 0),
        ("--header-timeout", args.header_timeout, args.header_timeout > 0),
        ("--keepalive-timeout", args.keepalive_timeout, args.keepalive_timeout > 0),
        ("--body-timeout", args.body_timeout, args.body_timeout > 0),
        ("--scan-pages", args.scan_pages, args.scan_pages >= 1),
        ("--memory-limit-bytes", args.memory_limit_bytes,
         args.memory_limit_bytes is None or args.memory_limit_bytes > 0),
        ("--max-connections", args.max_connections,
         args.max_connections is None or args.max_connections > 0),
    ]
    for flag, value, ok in rules:
        if not ok:
            parser.error(f"{flag} {value} is out of range")
    for flag, value in (("--poll-interval", args.poll_interval),
                        ("--resync-interval", args.resync_interval)):
        if value is not None and value <= 0:
            parser.error(f"{flag} {value} must be > 0 seconds")


def load_settings(args: argparse.Namespace, env: Mapping[str, str]) -> S3Settings | None:
    """Settings from --config, else env; None when --embedded-s3 is to supply them."""
    if args.config is not None:
        settings = amfs_config.load_amfs_yaml(args.config)
    elif env.get(amfs_config.ENV_BUCKET) or not args.embedded_s3:
        # Credentials in env (AWS_ACCESS_KEY_ID, ...) reach boto3 through its own chain.
        settings = amfs_config.from_env(env)
    else:
        return None
    return settings


def with_overrides(settings: S3Settings, args: argparse.Namespace) -> S3Settings:
    """Flags win over the config file and env (validated again: the rules span fields)."""
    overrides = {k: v for k, v in (("poll_interval", args.poll_interval),
                                   ("resync_interval", args.resync_interval),
                                   ("connect_timeout", args.s3_connect_timeout),
                                   ("read_timeout", args.s3_read_timeout),
                                   ("max_attempts", args.s3_max_attempts),
                                   ("operation_deadline", args.s3_operation_deadline))
                 if v is not None}
    if not overrides:
        return settings
    try:
        return S3Settings.model_validate({**dict(settings), **overrides})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'flags'}: {err['msg']}"
                             for err in exc.errors())
        raise ConfigError(f"invalid flags: {problems}") from None


def metrics_host(args: argparse.Namespace) -> str:
    if args.metrics_host is not None:
        return str(args.metrics_host)
    return "127.0.0.1" if args.embedded_s3 else "0.0.0.0"


def sidecar_config(args: argparse.Namespace, settings: S3Settings, env: Mapping[str, str]
                   ) -> SidecarConfig:
    socket_path = args.socket or (Path(env[ENV_SOCKET]) if env.get(ENV_SOCKET) else None)
    if socket_path is None:
        socket_path = Path(EMBEDDED_SOCKET if args.embedded_s3 else DEFAULT_SOCKET)
    return SidecarConfig(
        settings=settings,
        socket_path=socket_path,
        listen=args.listen,
        metrics_host=metrics_host(args),
        metrics_port=args.metrics_port,
        max_entry_bytes=args.max_entry_bytes,
        cache_bytes=args.cache_bytes,
        drain_seconds=args.drain_seconds,
        read_only=args.read_only,
        credentials_dir=args.credentials_dir,
        credentials_check_seconds=args.credentials_check_seconds,
        heartbeat_seconds=args.heartbeat_seconds,
        agent_id=args.agent_id,
        allow_insecure_socket_dir=args.allow_insecure_socket_dir,
        stream_queue_bytes=args.stream_queue_bytes,
        stream_write_timeout=args.stream_write_timeout,
        header_timeout=args.header_timeout,
        keepalive_timeout=args.keepalive_timeout,
        body_timeout=args.body_timeout,
        max_connections=args.max_connections,
        index_snapshot=args.index_snapshot == "on",
        scan_pages=args.scan_pages,
        memory_limit_bytes=args.memory_limit_bytes,
    )


def try_commands(socket_path: Path) -> str:
    """The three copy-paste commands printed by ``make run``."""
    sock = str(socket_path)
    body = ('{"entity_path": "demo/checkout", "key": "retry-pattern", '
            '"value": {"max_retries": 3}, "agent_id": "me"}')
    return "\n".join([
        "Try it (in another terminal):",
        "  # write an entry",
        f"  curl -s --unix-socket {sock} -X POST http://localhost/api/v1/entries "
        f"-H 'content-type: application/json' -d '{body}'",
        "  # read it back",
        f"  curl -s --unix-socket {sock} http://localhost/api/v1/entries/demo/checkout/retry-pattern",
        "  # watch every change as it happens (Server-Sent Events)",
        f"  curl -sN --unix-socket {sock} 'http://localhost/api/v1/stream?entity_path=*'",
    ])


def start_embedded(provider: str) -> Any:
    """``--embedded-s3``: start the server, saying what it is and where its data lives."""
    try:
        from amfs_sidecar.embedded_s3 import start_embedded_s3, starting_line
        from amfs_sidecar.seaweedfs import SeaweedFSError
    except ImportError as exc:
        raise ConfigError(
            f"--embedded-s3 needs the test extra ({exc.name} is missing): "
            "pip install -e '.[test]', or run `make run`, which installs it"
        ) from None
    print(starting_line(provider), flush=True)
    try:
        return start_embedded_s3(provider)
    except (SeaweedFSError, ImportError) as exc:
        raise ConfigError(f"--embedded-s3={provider}: {exc}") from None


def embedded_bucket(embedded: Any, settings: S3Settings | None) -> S3Settings:
    from amfs_sidecar.embedded_s3 import embedded_settings

    settings, created = embedded_settings(embedded, settings)
    print(f"S3 endpoint {embedded.endpoint_url}, bucket {settings.bucket!r} "
          + ("created." if created else "kept from the last run."), flush=True)
    for line in embedded.data_lines():
        print(line, flush=True)
    return settings


async def _serve(sidecar: Sidecar, on_started: Any = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            logger.warning("second signal: exiting without draining")
            os._exit(1)
        logger.info("signal received", extra=fields(signal=signal.Signals(signum).name))
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await sidecar.start()
    if on_started is not None:
        on_started(sidecar)
    try:
        await stop.wait()
    finally:
        await sidecar.stop()


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [check_storage.COMMAND]:
        return check_storage.main(argv[1:], env)
    parser = build_parser(env)
    args = parser.parse_args(argv)
    _check_positive(args, parser)
    logs.configure(args.log_format, args.log_level)
    embedded = None
    try:
        settings = load_settings(args, env)
        if args.embedded_s3:
            embedded = start_embedded(args.embedded_s3)
            settings = embedded_bucket(embedded, settings)
        assert settings is not None
        config = sidecar_config(args, with_overrides(settings, args), env)

        def announce(sidecar: Sidecar) -> None:
            if not args.embedded_s3:
                return
            print(f"Sidecar API on unix socket {config.socket_path}"
                  + (f", metrics on {sidecar.metrics_url}/metrics" if sidecar.metrics_url else "")
                  + ". Ctrl-C stops both.", flush=True)
            print(try_commands(config.socket_path), flush=True)

        asyncio.run(_serve(Sidecar(config), announce))
    except ConfigError as exc:
        print(f"amfs-sidecar: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"amfs-sidecar: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if embedded is not None:
            embedded.stop()
            print(embedded.stopped_line(), flush=True)
    return 0
