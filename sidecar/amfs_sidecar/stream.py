"""Watch streams: Server-Sent Events fanned out from one hub.

Every change the sidecar learns of — its own writes at once, other writers'
through the poller — is published to :class:`StreamHub` as an :class:`Event`
whose id is the change's journal key. Each open stream has a queue bounded in
events and in bytes, and each write to its client a timeout: a stream that
falls too far behind, or whose client stops reading, is closed rather than
buffering without limit. A client still reading gets a last ``event: reset``
whose data names the last id it was sent; it resumes from the journal with
``Last-Event-ID``, which is what that header is for.
"""

from __future__ import annotations

import asyncio
import json
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
# Entries are up to 1 MiB; a few streams of this fit a 256Mi pod with room to spare.
DEFAULT_QUEUE_BYTES = 8 * 1024 * 1024
DEFAULT_WRITE_TIMEOUT_SECONDS = 30.0
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

    @property
    def size(self) -> int:
        """Bytes this event holds while queued (its encoded form, near enough)."""
        return len(self.data) + len(self.id) + len(self.kind) + 24

    def encode(self) -> bytes:
        # JSON from pydantic has no raw newlines, so data is one line.
        return b"id: %s\nevent: %s\ndata: %s\n\n" % (
            self.id.encode(), self.kind.encode(), self.data,
        )


def reset_event(last_event_id: str | None, reason: str) -> bytes:
    """The stream's last event when the sidecar ends it: where to resume from.

    No ``id:`` line, so the client's last event id stays the last one it got.
    """
    data = json.dumps({"reason": reason, "last_event_id": last_event_id,
                       "detail": "reconnect with Last-Event-ID set to last_event_id; "
                                 "the journal replays what this stream did not send"})
    return b"event: reset\ndata: %s\n\n" % data.encode()


class Subscription:
    """One open stream: its scope and its queue (``None`` = the hub closed it).

    Bounded by *max_events* and by *max_bytes*: a queue past either is emptied
    at once (its memory is what a stalled client would pin) and ends with the
    sentinel; the stream then tells its client to resume.
    """

    def __init__(self, scope: str, max_events: int,
                 max_bytes: int = DEFAULT_QUEUE_BYTES) -> None:
        self.scope = scope
        # One slot more than the events allowed, so the sentinel always fits.
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=max_events + 1)
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.queued_bytes = 0
        self.overflowed = False

    def offer(self, event: Event) -> None:
        if self.overflowed:
            return
        if (self.queue.qsize() >= self.max_events
                or self.queued_bytes + event.size > self.max_bytes):
            self.overflowed = True
            self._drop_queued()
            self.close()
            return
        self.queue.put_nowait(event)
        self.queued_bytes += event.size

    def taken(self, event: Event) -> None:
        """The stream took *event* off the queue."""
        self.queued_bytes = max(0, self.queued_bytes - event.size)

    def _drop_queued(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queued_bytes = 0

    def close(self) -> None:
        if self.queue.full():  # only reachable by closing twice: one sentinel is enough
            return
        self.queue.put_nowait(None)


class StreamHub:
    """Fan-out of events to subscriptions; used from the event loop only."""

    def __init__(self, *, max_queue_events: int = DEFAULT_QUEUE_EVENTS,
                 max_queue_bytes: int = DEFAULT_QUEUE_BYTES,
                 write_timeout: float = DEFAULT_WRITE_TIMEOUT_SECONDS,
                 remember: int = 10_000) -> None:
        self._subs: set[Subscription] = set()
        self._max_queue = max_queue_events
        self._max_bytes = max_queue_bytes
        # How long one write to a stream's client may wait for it to read.
        self.write_timeout = write_timeout
        # Ids published lately: the poller may find a change the API published already.
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._remember = remember
        self.closed = False

    def __len__(self) -> int:
        return len(self._subs)

    def subscribe(self, scope: str) -> Subscription:
        sub = Subscription(scope, self._max_queue, self._max_bytes)
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


class StreamStalled(Exception):
    """A write to a stream's client waited longer than the hub's write timeout."""


async def _write(response: web.StreamResponse, data: bytes, timeout: float) -> None:
    try:
        await asyncio.wait_for(response.write(data), timeout)
    except TimeoutError:
        raise StreamStalled from None


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
        timeout = hub.write_timeout
        last_sent = last_event_id  # what the client has: where it would resume
        try:
            await _write(response, b"retry: %d\n: connected\n\n" % RECONNECT_MS, timeout)
            sent: set[str] = set()
            for old in missed:
                await _write(response, old.encode(), timeout)
                sent.add(old.id)
                last_sent = old.id
            while True:
                try:
                    event = await asyncio.wait_for(sub.queue.get(), timeout=heartbeat)
                except TimeoutError:
                    await _write(response, b": heartbeat\n\n", timeout)
                    continue
                if event is None:
                    break
                sub.taken(event)
                if event.id in sent or (last_event_id is not None and event.id <= last_event_id):
                    continue
                await _write(response, event.encode(), timeout)
                last_sent = event.id
            if sub.overflowed:
                logger.warning("watch closed: client too slow; it resumes with Last-Event-ID",
                               extra=fields(entity_path=scope, last_event_id=last_sent))
                await _write(response, reset_event(last_sent, "overflow"), timeout)
        except ConnectionResetError:
            # How every client leaves: it closes the connection and the next
            # write (an event or a heartbeat) finds it closed. Not an error.
            logger.debug("watch client disconnected", extra=fields(entity_path=scope))
            return response
        except StreamStalled:
            # The client stopped reading: what it has not read stays in buffers
            # only a closed connection frees. It resumes from its own last id.
            logger.warning("watch closed: client stopped reading", extra=fields(
                entity_path=scope, write_timeout=timeout, last_event_id=last_sent))
            if request.transport is not None:
                request.transport.abort()
        return response
    finally:
        hub.unsubscribe(sub)
        logger.info("watch closed", extra=fields(entity_path=scope))
