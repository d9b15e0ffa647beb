"""Every client connection bounded: a deadline for the request head, a cap on their number.

aiohttp (3.14) reaps an idle keep-alive connection after ``keepalive_timeout``
(that timer also starts at accept), but has no deadline for a request head
being sent: a client sending one header byte a second was kept for as long as
it liked, and there is no limit on open connections at all. Here:

- a connection must complete a request head within ``header_timeout`` of being
  accepted, and, on a kept-alive connection, of the first byte of each later
  head (the idle wait between requests is aiohttp's keep-alive timeout). Late
  heads get ``408`` and are closed; a connection that sent nothing is just closed.
- past ``limit`` open connections (one count across the listeners of one
  runner) a new connection gets a fixed ``503`` and is closed at once, before
  anything is parsed; the refusal is logged (rate-limited).

The pieces plug into aiohttp where it expects them: a runner's ``_make_server``
is its documented (abstract) extension point, and the :class:`Server` makes the
protocol object for every accepted connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from amfs_sidecar.logs import fields

logger = logging.getLogger(__name__)

DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_KEEPALIVE_TIMEOUT = 30.0
# From the end of the head to the last byte of the body (at most --max-entry-bytes,
# 1 MiB by default: 35 KB/s would still make it). A body trickled in a byte at a time
# would otherwise hold a connection slot for as long as its sender likes.
DEFAULT_BODY_TIMEOUT = 30.0
# After an answer given before the body was read (408, 413, 415, 403), aiohttp reads
# and drops the rest so the client sees the answer, for up to this long (its default,
# 10 s, would let a trickling client hold the slot that much longer). Every client
# is local (the socket, loopback TCP): a body that is coming arrives in far less.
LINGER_SECONDS = 2.0
# Prometheus and the kubelet's probes need a handful; agents never use this port.
METRICS_MAX_CONNECTIONS = 16
# asyncio accepts up to a listener's backlog per loop iteration, and a refused
# connection's descriptor is closed three iterations after its accept (task,
# connection_made, connection_lost): under a flood about ACCEPT_BATCHES_IN_FLIGHT
# batches per listener are open at once beyond the limit, so the batch is small.
# asyncio passes the same number to listen(), and a short kernel queue drops
# connections in a burst (each retried a second later: 3,000 connects took 60 s
# instead of 2), so the kernel's queue is widened again once the site has started
# (:func:`widen_listen_queue`).
API_BACKLOG = 8
METRICS_BACKLOG = 8
ACCEPT_BATCHES_IN_FLIGHT = 4
LISTEN_QUEUE = 1024  # the kernel caps it at net.core.somaxconn
# A refused client whose request is already in our receive buffer would get a
# reset instead of the 503 if we closed at once; a few refusals wait for it.
REFUSAL_LINGER_SECONDS = 1.0
REFUSAL_LINGER_SLOTS = 16

REQUEST_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
)

Observer = Callable[[str, str], None]  # (listener, reason)


def refusal_response(limit: int) -> bytes:
    body = json.dumps({
        "detail": f"this sidecar already has {limit} open connections, its limit "
                  "(--max-connections, lowered to fit the descriptor limit); retry later",
        "type": "too_many_connections",
    }).encode()
    head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")
    return head.encode() + body


class ConnectionGuard:
    """The count and the rules of one runner's connections."""

    def __init__(self, listener: str, *, limit: int, header_timeout: float,
                 observer: Observer | None = None) -> None:
        if limit < 1 or header_timeout <= 0:
            raise ValueError(f"limit {limit} must be >= 1 and header_timeout "
                             f"{header_timeout} > 0")
        self.listener = listener
        self.limit = limit
        self.header_timeout = header_timeout
        self.active = 0
        self.lingering = 0
        self.refusal = refusal_response(limit)
        self._observer = observer

    def admit(self) -> bool:
        if self.active < self.limit:
            self.active += 1
            return True
        self.observe("refused")
        logger.warning("connection refused: too many open connections",
                       extra=fields(listener=self.listener, limit=self.limit))
        return False

    def release(self) -> None:
        self.active -= 1

    def observe(self, reason: str) -> None:
        if self._observer is not None:
            self._observer(self.listener, reason)


class Refusal(asyncio.Protocol):
    """A connection over the limit: the 503, then closed (after a moment, if a slot is free)."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self._guard = guard
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(self._guard.refusal)
        if self._guard.lingering >= REFUSAL_LINGER_SLOTS:
            transport.close()
            return
        self._guard.lingering += 1
        self._timer = asyncio.get_running_loop().call_later(
            REFUSAL_LINGER_SECONDS, transport.close)

    def data_received(self, data: bytes) -> None:
        # The request has been read out of the socket: closing now sends a FIN, not a reset.
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._guard.lingering -= 1
        self._transport = None


class GuardedRequestHandler(RequestHandler):
    """aiohttp's protocol, admitted by a :class:`ConnectionGuard` and given a head deadline."""

    def __init__(self, manager: Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._admitted = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit():
            refusal = Refusal(self._guard)
            transport.set_protocol(refusal)
            refusal.connection_made(transport)
            return
        self._admitted = True
        super().connection_made(transport)
        self._start_head_timer()

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:
            self._cancel_head_timer()
            return
        if not data:
            return
        # Waiting for a request with nothing queued: these bytes begin the next head.
        if self._head_timer is None and self._waiter is not None and not self._messages:
            self._start_head_timer()
        if self._head_timer is not None:
            self._head_bytes += len(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        if self._admitted:
            self._admitted = False
            self._guard.release()
        super().connection_lost(exc)

    def _start_head_timer(self) -> None:
        self._head_bytes = 0
        self._head_timer = self._loop.call_later(self._guard.header_timeout,
                                                 self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport is None or self._force_close:
            return
        if self._head_bytes:
            self.transport.write(REQUEST_TIMEOUT_RESPONSE)
        self._guard.observe("header_timeout")
        self.force_close()


class GuardedServer(Server):
    """aiohttp's low-level server whose connections are :class:`GuardedRequestHandler`."""

    def __init__(self, base: Server, guard: ConnectionGuard) -> None:
        # The application's handler options (debug, access log, keep-alive) live
        # only on the server aiohttp built; this one is that server plus the guard.
        super().__init__(base.request_handler, request_factory=base.request_factory,
                         handler_cancellation=base.handler_cancellation, **base._kwargs)
        self.guard = guard

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, self.guard, loop=self._loop, **self._kwargs)


def widen_listen_queue(site: web.BaseSite, length: int = LISTEN_QUEUE) -> None:
    """Let the kernel queue *length* connections on *site*'s sockets, whatever asyncio's batch.

    listen() on a listening socket only changes its queue length; a duplicate
    descriptor reaches the socket without touching asyncio's own object.
    """
    server = site._server  # aiohttp exposes a site's sockets only through its server
    for listening in getattr(server, "sockets", None) or ():
        with socket.socket(fileno=os.dup(listening.fileno())) as duplicate:
            duplicate.listen(length)


class GuardedAppRunner(web.AppRunner):
    """An :class:`~aiohttp.web.AppRunner` whose server is a :class:`GuardedServer`."""

    def __init__(self, app: web.Application, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard

    async def _make_server(self) -> Server:
        return GuardedServer(await super()._make_server(), self.guard)
