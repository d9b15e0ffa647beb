"""One watch client that never reads, while thousands of 200 KB writes pass.

The sidecar runs as its own process so its memory can be read from
``/proc/<pid>/status``. Without bounds one such client pinned up to 1,000
entry bodies (RSS 221 MB -> 619 MB) and was never closed. Now its queue is
bounded in bytes and its writes time out: RSS stays within the bound stated
below, the stalled client is disconnected, and a normal client alongside
receives every event.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from amfs_s3.config import S3Settings
from tests.fixtures.s3 import all_keys
from tests.fixtures.sidecar import SidecarProcess, reader, spawn_sidecar, unix_get, wait_until

MiB = 1024 * 1024
VALUE_BYTES = 200 * 1000
WRITES = 2000
WRITERS = 4
CACHE_BYTES = 8 * MiB
QUEUE_BYTES = 4 * MiB
WRITE_TIMEOUT = 2.0
# What a stalled stream may add to the sidecar's memory: its queue, the transport
# buffer with the event being written, and room for allocator slack and the
# writers' request bodies in flight.
SLACK = 64 * MiB
BOUND = CACHE_BYTES + QUEUE_BYTES + SLACK


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


class Sampler(threading.Thread):
    """The peak RSS of a process, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, rss(self.pid))
            self.done.wait(0.05)


class Watcher(threading.Thread):
    """A normal SSE client: reads every event and counts the write ids."""

    def __init__(self, socket_path: Path) -> None:
        super().__init__(daemon=True)
        self.conn = reader(socket_path)
        self.conn.request("GET", "/api/v1/stream?entity_path=*")
        self.response = self.conn.getresponse()
        assert self.response.status == 200
        self.ids: list[str] = []

    def run(self) -> None:
        # The test closes the connection under this loop when it is done.
        with contextlib.suppress(OSError, AttributeError, ValueError):
            self._read()

    def _read(self) -> None:
        event, current = None, ""
        for raw in self.response:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("id: "):
                current = line[4:]
            elif line == "" and event == "write":
                self.ids.append(current)
                event = None


def stalled_client(socket_path: Path) -> socket.socket:
    """Opens a stream and never reads from it (a small receive buffer, as a stuck peer has)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(str(socket_path))
    sock.sendall(b"GET /api/v1/stream?entity_path=* HTTP/1.1\r\nHost: localhost\r\n\r\n")
    return sock


def write_many(socket_path: Path, first: int, count: int, errors: list[str]) -> None:
    conn = reader(socket_path)
    value = "v" * VALUE_BYTES
    for n in range(first, first + count):
        body = json.dumps({"entity_path": "big", "key": f"k{n % 50}", "value": value,
                           "agent_id": "writer"}).encode()
        conn.request("POST", "/api/v1/entries", body=body,
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        if response.status != 201:
            errors.append(f"write {n}: {response.status}")
    conn.close()


def watchers(socket_path: Path) -> int:
    status, body = unix_get(socket_path, "/api/v1/stats")
    assert status == 200
    return int(json.loads(body)["watchers"])


def closed_by_server(sock: socket.socket) -> bool:
    """Drain what the kernel holds; True once the sidecar has closed its end."""
    sock.settimeout(0.2)
    try:
        while True:
            if not sock.recv(1 << 20):
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


@pytest.fixture
def sidecar_process(s3_settings: S3Settings, socket_dir: Path, s3_client: Any
                    ) -> Iterator[SidecarProcess]:
    running = spawn_sidecar(
        s3_settings, socket_dir / "stall.sock", "--log-level", "WARNING",
        "--cache-bytes", str(CACHE_BYTES), "--stream-queue-bytes", str(QUEUE_BYTES),
        "--stream-write-timeout", str(WRITE_TIMEOUT), "--heartbeat-seconds", "1",
    )
    yield running
    running.terminate()
    # Thousands of 200 KB versions: give the session's moto server its memory back.
    keys = all_keys(s3_client, s3_settings.bucket)
    for start in range(0, len(keys), 1000):
        s3_client.delete_objects(Bucket=s3_settings.bucket, Delete={
            "Objects": [{"Key": k} for k in keys[start:start + 1000]], "Quiet": True})


@pytest.mark.slow
def test_a_stalled_stream_is_closed_and_bounded_while_a_normal_one_gets_everything(
        sidecar_process: SidecarProcess) -> None:
    path, pid = sidecar_process.socket_path, sidecar_process.process.pid
    errors: list[str] = []
    write_many(path, 0, 20, errors)  # warm up: imports, pools, caches
    baseline = rss(pid)
    sampler = Sampler(pid)
    sampler.start()
    watcher = Watcher(path)
    watcher.start()
    stalled = stalled_client(path)
    wait_until(lambda: watchers(path) == 2, message="both streams open")
    started = time.monotonic()
    per_writer = WRITES // WRITERS
    threads = [threading.Thread(target=write_many, args=(path, 20 + w * per_writer, per_writer,
                                                          errors)) for w in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    took = time.monotonic() - started
    wait_until(lambda: len(watcher.ids) >= WRITES, timeout=60,
               message=f"the normal stream receiving all {WRITES} events")
    sampler.done.set()
    sampler.join()
    growth = sampler.peak - baseline
    print(f"\n{WRITES} writes of {VALUE_BYTES} B in {took:.1f} s; sidecar RSS baseline "
          f"{baseline / MiB:.0f} MiB, peak {sampler.peak / MiB:.0f} MiB "
          f"(+{growth / MiB:.0f} MiB; bound +{BOUND / MiB:.0f} MiB)")
    assert errors == []
    assert growth <= BOUND
    assert len(set(watcher.ids)) == WRITES  # every event once, none lost to the stall
    assert watchers(path) == 1  # the stalled stream was closed
    wait_until(lambda: closed_by_server(stalled), timeout=30,
               message="the stalled client's connection closed by the sidecar")
    log = sidecar_process.log()
    assert "watch closed: client stopped reading" in log or "client too slow" in log
    stalled.close()
    watcher.conn.close()
