"""Watch streams: Server-Sent Events fanned out from one hub.

Every change the sidecar learns of — its own writes at once, other writers'
through the poller — is published to :class:`StreamHub` as an :class:`Event`
whose id is the change's journal key. Each open stream has a bounded queue; a
stream that falls too far behind is closed rather than buffering without limit,
and its client resumes from the journal with ``Last-Event-ID``, which is what
that header is for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from amfs_s3.layout import is_within
from amfs_sidecar.logs import fields

logger = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_SECONDS = 15.0
DEFAULT_QUEUE_EVENTS = 1000
RECONNECT_MS = 2000


@dataclass(frozen=True)
class Event:
    """One SSE event: ``id`` = journal key, ``event`` = kind, ``data`` = JSON."""

    id: str
    kind: str  # "write" | "outcome"
    data: bytes
    entity_paths: tuple[str, ...]

    def concerns(self, scope: str) -> bool:
        """Whether a stream watching *scope* ('*' = everything) gets this event."""
        if scope in ("", "*"):
            return True
        return any(is_within(path, scope) for path in self.entity_paths)

    def encode(self) -> bytes:
        # JSON from pydantic has no raw newlines, so data is one line.
        return b"id: %s\nevent: %s\ndata: %s\n\n" % (
            self.id.encode(), self.kind.encode(), self.data,
        )


class Subscription:
    """One open stream: its scope and its queue (``None`` = the hub closed it)."""

    def __init__(self, scope: str, max_events: int) -> None:
        self.scope = scope
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=max_events)
        self.overflowed = False

    def offer(self, event: Event) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            self.close()

    def close(self) -> None:
        # A full queue still needs the sentinel; drop one event to make room.
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
        self.queue.put_nowait(None)


class StreamHub:
    """Fan-out of events to subscriptions; used from the event loop only."""

    def __init__(self, *, max_queue_events: int = DEFAULT_QUEUE_EVENTS,
                 remember: int = 10_000) -> None:
        self._subs: set[Subscription] = set()
        self._max_queue = max_queue_events
        # Ids published lately: the poller may find a change the API published already.
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._remember = remember
        self.closed = False

    def __len__(self) -> int:
        return len(self._subs)

    def subscribe(self, scope: str) -> Subscription:
        sub = Subscription(scope, self._max_queue)
        if self.closed:
            sub.close()
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def wants(self, entity_paths: tuple[str, ...]) -> bool:
        """Whether any stream would receive an event about *entity_paths*."""
        probe = Event("", "", b"", entity_paths)
        return any(probe.concerns(sub.scope) for sub in self._subs)

    def publish(self, event: Event) -> bool:
        """Deliver *event* once; False if its id was published before."""
        if event.id in self._recent:
            return False
        self._recent[event.id] = None
        if len(self._recent) > self._remember:
            self._recent.popitem(last=False)
        for sub in list(self._subs):
            if event.concerns(sub.scope):
                sub.offer(event)
        return True

    def close_all(self) -> None:
        """Shutdown: every stream ends after what it already has queued."""
        self.closed = True
        for sub in list(self._subs):
            sub.close()


Replay = Callable[[str, str], Awaitable[list[Event]]]


async def serve_stream(
    request: web.Request,
    hub: StreamHub,
    *,
    scope: str,
    last_event_id: str | None,
    replay: Replay,
    heartbeat: float = DEFAULT_HEARTBEAT_SECONDS,
    on_prepared: Callable[[], None] | None = None,
) -> web.StreamResponse:
    """Serve one SSE stream until the client leaves or the hub closes.

    The subscription starts before the replay so nothing written meanwhile
    falls between the two; ids sent by the replay are not sent again live.
    A resumed stream also skips live events at or before its Last-Event-ID,
    as the replay does: a sidecar that just started polls its look-back
    window, which may hold changes the client had from the sidecar before.
    """
    sub = hub.subscribe(scope)
    try:
        missed = await replay(last_event_id, scope) if last_event_id else []
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        if on_prepared is not None:
            on_prepared()
        logger.info("watch opened", extra=fields(entity_path=scope, resumed=bool(last_event_id),
                                                 replayed=len(missed)))
        try:
            await _send(response, sub, missed, last_event_id, heartbeat)
        except ConnectionResetError:
            # How every client leaves: it closes the connection and the next
            # write (an event or a heartbeat) finds it closed. Not an error.
            logger.debug("watch client disconnected", extra=fields(entity_path=scope))
            return response
        if sub.overflowed:
            logger.warning("watch closed: client too slow; it resumes with Last-Event-ID",
                           extra=fields(entity_path=scope))
        return response
    finally:
        hub.unsubscribe(sub)
        logger.info("watch closed", extra=fields(entity_path=scope))


async def _send(response: web.StreamResponse, sub: Subscription, missed: list[Event],
                last_event_id: str | None, heartbeat: float) -> None:
    """Write the replay, then live events and heartbeats, until the hub closes *sub*."""
    await response.write(b"retry: %d\n: connected\n\n" % RECONNECT_MS)
    sent: set[str] = set()
    for old in missed:
        await response.write(old.encode())
        sent.add(old.id)
    while True:
        try:
            event = await asyncio.wait_for(sub.queue.get(), timeout=heartbeat)
        except TimeoutError:
            await response.write(b": heartbeat\n\n")
            continue
        if event is None:
            return
        if event.id in sent or (last_event_id is not None and event.id <= last_event_id):
            continue
        await response.write(event.encode())
