"""Slow, half-open and too many connections: each reaped or refused, and the sidecar keeps polling.

Before: a client sending one header byte a second stayed connected past 90 s,
3,000 half-open connections were all kept, and at a 256-descriptor limit the
sidecar stopped accepting, its polls failed and it wrote 473 MB of
``socket.accept() out of system resource`` tracebacks in two minutes.

The waits below are bounded by what the client does (bytes dripped) or by a
deadline that fails the test; nothing asserts on elapsed time. The reap times
are measured and printed (``-s``) for the closing note.
"""

from __future__ import annotations

import contextlib
import re
import resource
import select
import selectors
import socket
import statistics
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from amfs_s3 import S3Adapter
from amfs_s3.config import S3Settings
from amfs_sidecar.connections import DEFAULT_HEADER_TIMEOUT, DEFAULT_KEEPALIVE_TIMEOUT
from tests.fixtures.sidecar import (
    RunningSidecar,
    SidecarFactory,
    SidecarProcess,
    metric_value,
    spawn_sidecar,
    wait_until,
)
from tests.integration.test_adapter import make_entry

DRIP_SECONDS = 0.5
# A head that never ends: no blank line, and longer than any deadline here allows.
ENDLESS_HEAD = b"GET /ready HTTP/1.1\r\nHost: localhost\r\nX-Padding: " + b"a" * 200
GET_READY = b"GET /ready HTTP/1.1\r\nHost: localhost\r\n\r\n"
HALF_OPEN = 3000
ATTEMPTS = 1000
SLACK_SECONDS = 5.0
KEEPALIVE = 2.0


def drip_until_closed(sock: socket.socket, head: bytes, max_bytes: int) -> tuple[int, bytes]:
    """Send *head* one byte per DRIP_SECONDS until the sidecar closes; (bytes sent, reply)."""
    sent = 0
    for byte in head[:max_bytes]:
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += 1
        readable, _, _ = select.select([sock], [], [], DRIP_SECONDS)
        if readable:
            break
    else:
        raise AssertionError(f"still connected after {sent} bytes, one per {DRIP_SECONDS} s")
    return sent, read_to_eof(sock)


def read_to_eof(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def read_response(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length body (the probes' JSON)."""
    sock.settimeout(10.0)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += sock.recv(65536)
    return data


def unix(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    return sock


def tcp(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=10.0)


def tcp_address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host.strip("[]"), int(port)


@pytest.fixture
def descriptors() -> Iterator[int]:
    """This process's soft descriptor limit raised to hold HALF_OPEN sockets (children inherit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * HALF_OPEN + 1024
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below the {wanted} this test needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield wanted
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- in process: the deadlines --------------------------------------------------


@pytest.fixture
def guarded(sidecar_factory: SidecarFactory) -> RunningSidecar:
    # Keep-alive longer than the head deadline: its timer starts at accept too, and
    # would otherwise close a slow head first (without a 408).
    return sidecar_factory(header_timeout=1.0, keepalive_timeout=KEEPALIVE, body_timeout=1.0,
                           listen=("127.0.0.1", 0))


@pytest.mark.parametrize("listener", ["unix", "tcp"])
def test_slowloris_gets_408_at_the_header_deadline(guarded: RunningSidecar,
                                                   listener: str) -> None:
    assert guarded.sidecar.api_url is not None
    sock = (unix(guarded.socket_path) if listener == "unix"
            else tcp(tcp_address(guarded.sidecar.api_url)))
    started = time.monotonic()
    with sock:
        sent, reply = drip_until_closed(sock, ENDLESS_HEAD, max_bytes=int(1.0 / DRIP_SECONDS) + 4)
    print(f"\nslowloris ({listener}, --header-timeout 1): closed after "
          f"{time.monotonic() - started:.2f} s, {sent} bytes")
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert guarded.metric("amfs_sidecar_connections_closed_total", listener="api",
                          reason="header_timeout") == 1


@pytest.mark.parametrize("listener", ["unix", "tcp"])
def test_a_trickled_body_gets_408_at_the_body_deadline_and_is_closed(guarded: RunningSidecar,
                                                                    listener: str) -> None:
    """The head arrives whole (the head deadline is met), the body a byte at a time."""
    assert guarded.sidecar.api_url is not None
    body = b'{"entity_path": "svc", "key": "k", "value": "' + b"v" * 200 + b'"}'
    head = (b"POST /api/v1/entries HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
    sock = (unix(guarded.socket_path) if listener == "unix"
            else tcp(tcp_address(guarded.sidecar.api_url)))
    started = time.monotonic()
    with sock:
        sock.sendall(head)
        sent, reply = drip_until_closed(sock, body, max_bytes=int(1.0 / DRIP_SECONDS) + 4)
    print(f"\ntrickled body ({listener}, --body-timeout 1): closed after "
          f"{time.monotonic() - started:.2f} s, {sent} of {len(body)} body bytes")
    assert sent < len(body)
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert b"--body-timeout" in reply and b"Connection: close" in reply
    assert guarded.metric("amfs_sidecar_requests_total", route="/api/v1/entries",
                          method="POST", code="408") == 1
    assert guarded.sidecar.ctx is not None and guarded.sidecar.ctx.index.count("entries") == 0


def test_each_later_head_on_a_kept_alive_connection_has_the_deadline(
        guarded: RunningSidecar) -> None:
    with unix(guarded.socket_path) as sock:
        for _ in range(3):  # whole requests, each well inside the deadline, keep it open
            sock.sendall(GET_READY)
            assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        _, reply = drip_until_closed(sock, ENDLESS_HEAD, max_bytes=int(1.0 / DRIP_SECONDS) + 4)
    assert reply.startswith(b"HTTP/1.1 408 ")


def test_an_idle_keep_alive_connection_is_closed(guarded: RunningSidecar) -> None:
    with unix(guarded.socket_path) as sock:
        sock.sendall(GET_READY)
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        assert read_to_eof(sock, timeout=KEEPALIVE + SLACK_SECONDS) == b""  # closed, silent
    print(f"\nidle keep-alive (--keepalive-timeout {KEEPALIVE:g}): closed after "
          f"{time.monotonic() - started:.2f} s")
    # Closed by keep-alive, not by the head deadline: that one counts.
    assert guarded.metric("amfs_sidecar_connections_closed_total", listener="api",
                          reason="header_timeout") == 0


def test_a_stream_outlives_both_deadlines(guarded: RunningSidecar) -> None:
    """The deadlines are for waiting on a request, never for a response being streamed."""
    with unix(guarded.socket_path) as sock:
        sock.sendall(b"GET /api/v1/stream?entity_path=* HTTP/1.1\r\nHost: localhost\r\n\r\n")
        sock.settimeout(10.0)
        received = b""
        # Heartbeats every 0.5 s: ten of them span more than both deadlines.
        while received.count(b"\n:") < 10:
            chunk = sock.recv(65536)
            assert chunk, f"stream closed: {received!r}"
            received += chunk
    assert received.startswith(b"HTTP/1.1 200 ")


def test_past_the_limit_a_503_and_a_slot_freed_is_a_slot_reused(
        sidecar_factory: SidecarFactory) -> None:
    running = sidecar_factory(max_connections=2, listen=("127.0.0.1", 0))
    assert running.sidecar.api_url is not None
    first, second = unix(running.socket_path), tcp(tcp_address(running.sidecar.api_url))
    try:
        for sock in (first, second):  # the limit counts both listeners together
            sock.sendall(GET_READY)
            assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        with unix(running.socket_path) as third:
            third.sendall(GET_READY)
            reply = read_to_eof(third)
        assert reply.startswith(b"HTTP/1.1 503 ") and b'"too_many_connections"' in reply
        first.close()
        wait_until(lambda: running.metric("amfs_sidecar_connections", listener="api") == 1,
                   message="the closed connection's slot released")
        with unix(running.socket_path) as fourth:
            fourth.sendall(GET_READY)
            assert read_response(fourth).startswith(b"HTTP/1.1 200 ")
    finally:
        first.close()
        second.close()
    assert running.metric("amfs_sidecar_connections_closed_total", listener="api",
                          reason="refused") == 1


# -- real processes: 3,000 half-open, and a 256-descriptor limit -----------------


def spawn(settings: S3Settings, socket_path: Path, *args: str,
          nofile: int | None = None) -> SidecarProcess:
    """A sidecar process that also listens on an ephemeral loopback TCP port."""
    return spawn_sidecar(settings, socket_path, "--listen", "127.0.0.1:0",
                         "--poll-interval", "0.2", *args, nofile=nofile)


def urls(running: SidecarProcess) -> tuple[tuple[str, int], str, int]:
    """(API TCP address, metrics URL, connection limit) from the start-up log line."""
    line = next(line for line in running.log().splitlines() if "sidecar listening" in line)
    fields = dict(re.findall(r"(\w+)=(\S+)", line))
    return tcp_address(fields["tcp"]), fields["metrics"], int(fields["max_connections"])


def scrape(metrics_url: str) -> str:
    with urllib.request.urlopen(metrics_url + "/metrics", timeout=5) as response:
        return response.read().decode()


def probe(metrics_url: str) -> int:
    with urllib.request.urlopen(metrics_url + "/ready", timeout=5) as response:
        return response.status


@pytest.mark.parametrize("header_timeout", [
    pytest.param(2.0, id="header-timeout-2s"),
    pytest.param(DEFAULT_HEADER_TIMEOUT, id="defaults", marks=pytest.mark.slow),
])
def test_3000_half_open_connections_are_all_reaped(
        s3_settings: S3Settings, socket_dir: Path, descriptors: int,
        sidecar_processes: list[SidecarProcess], header_timeout: float) -> None:
    args = ["--max-connections", str(HALF_OPEN + 100)]
    if header_timeout != DEFAULT_HEADER_TIMEOUT:
        args += ["--header-timeout", str(header_timeout)]
    running = spawn(s3_settings, socket_dir / "half-open.sock", *args)
    sidecar_processes.append(running)
    address, metrics_url, limit = urls(running)
    assert limit >= HALF_OPEN

    selector = selectors.DefaultSelector()
    opened: dict[socket.socket, float] = {}
    try:
        for _ in range(HALF_OPEN):
            sock = tcp(address)  # connected, and never sends a byte
            sock.setblocking(False)
            opened[sock] = time.monotonic()
            selector.register(sock, selectors.EVENT_READ)
        print(f"\n{HALF_OPEN} connections opened in "
              f"{time.monotonic() - min(opened.values()):.2f} s")
        reaped: dict[socket.socket, float] = {}
        deadline = time.monotonic() + header_timeout + SLACK_SECONDS
        while len(reaped) < HALF_OPEN and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.5):
                sock = key.fileobj  # type: ignore[assignment]
                with contextlib.suppress(ConnectionResetError):
                    assert sock.recv(1024) == b""  # a half-open connection is just closed
                reaped[sock] = time.monotonic()
                selector.unregister(sock)
        assert len(reaped) == HALF_OPEN, f"{HALF_OPEN - len(reaped)} connections still open"
    finally:
        selector.close()
        for sock in opened:
            sock.close()
    ages = [reaped[s] - opened[s] for s in opened]
    print(f"\n{HALF_OPEN} half-open (--header-timeout {header_timeout:g}): reaped after "
          f"median {statistics.median(ages):.2f} s, max {max(ages):.2f} s; all gone "
          f"{max(reaped.values()) - min(opened.values()):.2f} s after the first connect")
    text = scrape(metrics_url)
    assert metric_value(text, "amfs_sidecar_connections_closed_total", listener="api",
                        reason="header_timeout") == HALF_OPEN
    assert metric_value(text, "amfs_sidecar_connections", listener="api") == 0


@pytest.mark.parametrize("header_timeout", [
    pytest.param(DEFAULT_HEADER_TIMEOUT, id="defaults", marks=pytest.mark.slow),
])
def test_slowloris_with_the_default_deadline(
        s3_settings: S3Settings, socket_dir: Path, sidecar_processes: list[SidecarProcess],
        header_timeout: float) -> None:
    running = spawn(s3_settings, socket_dir / "slow.sock")
    sidecar_processes.append(running)
    started = time.monotonic()
    with unix(running.socket_path) as sock:
        sent, reply = drip_until_closed(sock, ENDLESS_HEAD,
                                        max_bytes=int(header_timeout / DRIP_SECONDS) + 4)
    print(f"\nslowloris (defaults): closed after {time.monotonic() - started:.2f} s, "
          f"{sent} bytes")
    assert reply.startswith(b"HTTP/1.1 408 ")


@pytest.mark.slow
def test_idle_keep_alive_with_the_default_timeout(
        s3_settings: S3Settings, socket_dir: Path,
        sidecar_processes: list[SidecarProcess]) -> None:
    running = spawn(s3_settings, socket_dir / "idle.sock")
    sidecar_processes.append(running)
    with unix(running.socket_path) as sock:
        sock.sendall(GET_READY)
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        assert read_to_eof(sock, timeout=DEFAULT_KEEPALIVE_TIMEOUT + SLACK_SECONDS) == b""
    print(f"\nidle keep-alive (defaults): closed after {time.monotonic() - started:.2f} s")


def test_at_256_descriptors_the_sidecar_refuses_cleanly_and_keeps_polling(
        s3_settings: S3Settings, socket_dir: Path, descriptors: int,
        sidecar_processes: list[SidecarProcess]) -> None:
    # Held connections must stay held for the whole test: a long head deadline.
    running = spawn(s3_settings, socket_dir / "tight.sock", "--header-timeout", "120",
                    nofile=256)
    sidecar_processes.append(running)
    address, metrics_url, limit = urls(running)
    assert limit < 256
    log_bytes_before = running.log_path.stat().st_size

    def polls() -> float:
        return metric_value(scrape(metrics_url), "amfs_sidecar_s3_requests_total",
                            operation="ListObjectsV2", outcome="success") or 0.0

    attempts: list[socket.socket] = []
    try:
        for i in range(ATTEMPTS):  # half on each API listener, each sending nothing
            attempts.append(unix(running.socket_path) if i % 2 else tcp(address))
        # Every attempt is answered: held (silent) or refused (503, then closed).
        wait_until(lambda: metric_value(scrape(metrics_url), "amfs_sidecar_connections",
                                        listener="api") == limit,
                   timeout=30, message=f"{limit} connections held")
        selector = selectors.DefaultSelector()
        for sock in attempts:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        replies: dict[socket.socket, bytes] = {}
        deadline = time.monotonic() + 30
        while len(replies) < ATTEMPTS - limit and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.5):
                sock = key.fileobj  # type: ignore[assignment]
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                replies[sock] = replies.get(sock, b"") + chunk
                if not chunk:
                    selector.unregister(sock)
        selector.close()
        closed = list(replies.values())
        refused = sum(reply.startswith(b"HTTP/1.1 503 ") for reply in closed)
        print(f"\nRLIMIT_NOFILE 256: limit {limit}, {ATTEMPTS} attempts, "
              f"{limit} held, {refused} refused with 503")
        assert len(closed) == ATTEMPTS - limit
        assert refused == ATTEMPTS - limit, "every refusal is the 503, never a bare reset"
        assert b"too_many_connections" in next(iter(closed))

        # The limit is reached; the kubelet's probe and the journal poll still work.
        assert probe(metrics_url) == 200
        before = polls()
        with S3Adapter.from_settings(s3_settings, writer_id="other-pod") as other:
            other.write(make_entry("full/house", "k", "written while the API is full"))
        wait_until(lambda: metric_value(scrape(metrics_url), "amfs_sidecar_objects",
                                        kind="entries") == 1,
                   timeout=30, message="the poll to pick up the write")
        assert polls() > before
        assert probe(metrics_url) == 200
        text = scrape(metrics_url)
        assert metric_value(text, "amfs_sidecar_connections_closed_total", listener="api",
                            reason="refused") == ATTEMPTS - limit
    finally:
        for sock in attempts:
            sock.close()

    # Descriptors given back, the API answers again.
    wait_until(lambda: running.ready(), message="the API answering once clients left")
    log = running.log()
    grown = running.log_path.stat().st_size - log_bytes_before
    print(f"log grew {grown} bytes; "
          f"{log.count('out of system resource')} 'out of system resource' lines")
    assert grown < 16 * 1024, log[-4000:]
    assert log.count("out of system resource") <= 3
    assert "Traceback" not in log
    # One line for all the refusals (one a minute), not one each.
    assert log.count("connection refused: too many open connections") == 1


def test_malformed_requests_are_one_line_each_and_rate_limited(
        s3_settings: S3Settings, socket_dir: Path,
        sidecar_processes: list[SidecarProcess]) -> None:
    running = spawn(s3_settings, socket_dir / "bad.sock")
    sidecar_processes.append(running)
    malformed = b"GET /ready HTTP/1.1\r\nHost: localhost\r\nno colon here\r\n\r\n"
    for _ in range(200):
        with unix(running.socket_path) as sock:
            sock.sendall(malformed)
            assert re.match(rb"HTTP/1\.[01] 400 ", read_to_eof(sock))
    assert running.ready()
    running.terminate()
    log = running.log()
    errors = [line for line in log.splitlines() if "aiohttp.server Error handling" in line]
    print(f"\n200 malformed requests: {len(errors)} log line(s), {len(log)} bytes of log")
    assert len(errors) == 1 and "error=" in errors[0] and "WARNING" in errors[0]
    assert "Traceback" not in log
    # What the interval held back is reported once, at stop.
    assert re.search(r"suppressed similar log records .*suppressed=199", log), log[-2000:]
