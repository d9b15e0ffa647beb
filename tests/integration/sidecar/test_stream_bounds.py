"""A stream that falls behind is ended with ``event: reset`` and resumes without a gap.

The client opens a stream on a socket with a tiny receive buffer and reads
nothing while entries of 100 KB are written: the sidecar's write to it waits,
events pile up in its queue past the byte bound, and the queue is dropped.
When the client reads again it gets what was buffered, then the reset naming
the last id it was sent; resuming from that id replays the rest, each once.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from tests.fixtures.sidecar import SidecarFactory, reader

VALUE = "v" * 100_000
WRITES = 12


def parse_sse(raw: bytes) -> list[tuple[str | None, str, Any]]:
    """(id, event, data) of every complete event in *raw* (comments skipped)."""
    events = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        event_id, kind, data = None, "message", None
        for line in block.decode(errors="replace").split("\n"):
            name, _, value = line.partition(": ")
            if name == "id":
                event_id = value
            elif name == "event":
                kind = value
            elif name == "data":
                data = json.loads(value)
        if data is not None:
            events.append((event_id, kind, data))
    return events


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    sock.settimeout(5)
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def unchunk(raw: bytes) -> bytes:
    """The body of a chunked HTTP response (headers stripped)."""
    _, _, rest = raw.partition(b"\r\n\r\n")
    body = []
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        body.append(rest[:size])
        rest = rest[size + 2:]
    return b"".join(body)


def test_a_stream_past_its_byte_bound_ends_with_reset_and_resumes_without_a_gap(
        sidecar_factory: SidecarFactory) -> None:
    running = sidecar_factory(stream_queue_bytes=300_000, stream_write_timeout=30.0)
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(str(running.socket_path))
    slow.sendall(b"GET /api/v1/stream?entity_path=* HTTP/1.1\r\nHost: localhost\r\n"
                 b"Connection: close\r\n\r\n")
    first = slow.recv(4096)  # the stream is open (headers, "connected")
    assert b"200 OK" in first
    for n in range(WRITES):
        write(running.socket_path, n)
    events = parse_sse(unchunk(first + read_all(slow)))
    slow.close()
    writes = [e for e in events if e[1] == "write"]
    assert events[-1][1] == "reset", [e[1] for e in events]
    reset = events[-1][2]
    assert reset["reason"] == "overflow"
    assert len(writes) < WRITES  # the queue was dropped, not delivered
    assert reset["last_event_id"] == (writes[-1][0] if writes else None)
    # Resume where the reset said: the replay brings the rest, each event once.
    conn = reader(running.socket_path)
    conn.request("GET", "/api/v1/stream?entity_path=*",
                 headers={"Last-Event-ID": reset["last_event_id"]} if writes else {})
    response = conn.getresponse()
    assert response.status == 200
    rest: list[str] = []
    buffer = b""
    while len(writes) + len(rest) < WRITES:
        buffer += response.read1(1 << 16)
        complete, _, buffer_tail = buffer.rpartition(b"\n\n")
        rest += [e[0] for e in parse_sse(complete) if e[1] == "write" and e[0] not in rest]
        buffer = buffer_tail
    conn.close()
    ids = [e[0] for e in writes] + rest
    assert sorted(ids) == sorted(set(ids)) and len(ids) == WRITES
    # One sidecar: ids in its delivery order, which is the order of the writes.
    assert ids == sorted(ids)


def write(socket_path: Path, n: int) -> None:
    conn = reader(socket_path)
    body = json.dumps({"entity_path": "big", "key": f"k{n}", "value": VALUE, "agent_id": "w"})
    conn.request("POST", "/api/v1/entries", body=body,
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 201
