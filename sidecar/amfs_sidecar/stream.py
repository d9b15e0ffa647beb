"""Watch streams: Server-Sent Events fanned out from one hub.

Every change the sidecar learns of — its own writes at once, other writers'
through the poller — is published to :class:`StreamHub`, which numbers it in
delivery order and stamps its id (:mod:`amfs_sidecar.event_ids`). The hub keeps
the most recent events (bodies within a byte budget; the rest are fetched again
when needed), so a client that reconnects to the same sidecar resumes exactly
after its ``Last-Event-ID``; any other id is resumed from the journal
(:mod:`amfs_sidecar.replay`).

Each open stream has a queue bounded in events and in bytes, and each write to
its client a timeout: a stream that falls too far behind, or whose client stops
reading, is closed rather than buffering without limit. A client still reading
gets a last ``event: reset`` whose data names the last id it was sent; it
resumes with ``Last-Event-ID``, which is what that header is for.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from amfs_s3.journal import Change
from amfs_s3.layout import is_within
from amfs_sidecar.event_ids import EventId, new_epoch
from amfs_sidecar.logs import fields

logger = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_SECONDS = 15.0
DEFAULT_QUEUE_EVENTS = 1000
# Entries are up to 1 MiB; a few streams of this fit a 256Mi pod with room to spare.
DEFAULT_QUEUE_BYTES = 8 * 1024 * 1024
DEFAULT_WRITE_TIMEOUT_SECONDS = 30.0
# The resume buffer: this many recent events (a few hundred bytes each without
# their bodies), their bodies within the byte budget, newest kept.
DEFAULT_BUFFER_EVENTS = 4096
DEFAULT_BUFFER_BYTES = 4 * 1024 * 1024
RECONNECT_MS = 2000


@dataclass(frozen=True)
class Event:
    """One SSE event about one journaled change.

    ``data`` is None while the entry or outcome behind the change has not been
    fetched (nobody watched when it came, or its body left the buffer);
    ``entity_paths`` is None while an outcome's citations are unknown.
    ``id`` and ``seq`` are stamped by the hub when it publishes the event.
    """

    change: Change
    kind: str  # "write" | "outcome"
    data: bytes | None
    entity_paths: tuple[str, ...] | None
    id: str = ""
    seq: int = 0

    @property
    def key(self) -> str:
        """The change's journal key: the same change always has the same one."""
        return self.change.journal_key

    def concerns(self, scope: str) -> bool:
        """Whether a stream watching *scope* ('*' = everything) gets this event
        (True while an outcome's citations are unknown: fetch it and ask again)."""
        if scope in ("", "*") or self.entity_paths is None:
            return True
        return any(is_within(path, scope) for path in self.entity_paths)

    @property
    def size(self) -> int:
        """Bytes this event holds while queued (its encoded form, near enough)."""
        return len(self.data or b"") + len(self.id) + len(self.kind) + 24

    def encode(self) -> bytes:
        assert self.data is not None, "an event is fetched before it is sent"
        # JSON from pydantic has no raw newlines, so data is one line.
        return b"id: %s\nevent: %s\ndata: %s\n\n" % (
            self.id.encode(), self.kind.encode(), self.data,
        )


def reset_event(last_event_id: str | None, reason: str, *, reread: bool = False,
                detail: str | None = None) -> bytes:
    """An ``event: reset``: the client must act before it can trust the stream.

    ``reread=False`` (the sidecar is ending the stream): no ``id:`` line, so the
    client's last event id stays the last one it got; it reconnects with it and
    misses nothing. ``reread=True`` (its Last-Event-ID cannot be resumed): the
    client re-reads what it watches, and the stream goes on from *last_event_id*,
    whose ``id:`` line makes it the client's resume point from now on.
    """
    if detail is None:
        detail = ("re-read the entries you watch (GET them); this stream continues with "
                  "every change from now on" if reread else
                  "reconnect with Last-Event-ID set to last_event_id; "
                  "the sidecar replays what this stream did not send")
    data = json.dumps({"reason": reason, "last_event_id": last_event_id, "reread": reread,
                       "detail": detail})
    head = b"id: %s\n" % last_event_id.encode() if reread and last_event_id else b""
    return head + b"event: reset\ndata: %s\n\n" % data.encode()


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
    """Fan-out of events to subscriptions, in one delivery order; event loop only."""

    def __init__(self, *, max_queue_events: int = DEFAULT_QUEUE_EVENTS,
                 max_queue_bytes: int = DEFAULT_QUEUE_BYTES,
                 write_timeout: float = DEFAULT_WRITE_TIMEOUT_SECONDS,
                 remember: int = 10_000,
                 buffer_events: int = DEFAULT_BUFFER_EVENTS,
                 buffer_bytes: int = DEFAULT_BUFFER_BYTES,
                 epoch: str | None = None) -> None:
        self._subs: set[Subscription] = set()
        self._max_queue = max_queue_events
        self._max_bytes = max_queue_bytes
        # How long one write to a stream's client may wait for it to read.
        self.write_timeout = write_timeout
        # Keys published lately: the poller may find a change the API published already.
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._remember = remember
        self.closed = False
        self.epoch = epoch or new_epoch()
        self.head = 0  # seq of the last event published
        # The storage time before which every journal record has been delivered
        # (the synchronizer's, see Synchronizer.stream_safe_ms): stamped into ids.
        self.position: Callable[[], int] = lambda: 0
        self._buffer: deque[Event] = deque(maxlen=buffer_events)  # bodies stripped
        self._bodies: OrderedDict[int, bytes] = OrderedDict()  # seq -> body, oldest first
        self._body_bytes = 0
        self._buffer_bytes = buffer_bytes

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
        return any(
            scope in ("", "*") or any(is_within(path, scope) for path in entity_paths)
            for scope in (sub.scope for sub in self._subs)
        )

    def head_id(self) -> str:
        """The id of where the stream stands now: resuming from it misses nothing later."""
        return str(EventId(self.epoch, self.head, self.position()))

    def publish(self, event: Event) -> Event | None:
        """Number, buffer and deliver *event*; None if its change was published before."""
        if event.key in self._recent:
            return None
        self._recent[event.key] = None
        if len(self._recent) > self._remember:
            self._recent.popitem(last=False)
        self.head += 1
        stamped = dataclasses.replace(
            event, seq=self.head, id=str(EventId(self.epoch, self.head, self.position())))
        self._keep(stamped)
        for sub in list(self._subs):
            if stamped.concerns(sub.scope):
                sub.offer(stamped)
        return stamped

    def _keep(self, event: Event) -> None:
        self._buffer.append(dataclasses.replace(event, data=None))
        if event.data is None:
            return
        self._bodies[event.seq] = event.data
        self._body_bytes += len(event.data)
        oldest = self._buffer[0].seq
        while self._bodies and (self._body_bytes > self._buffer_bytes
                                or next(iter(self._bodies)) < oldest):
            _, body = self._bodies.popitem(last=False)
            self._body_bytes -= len(body)

    def since(self, seq: int) -> list[Event] | None:
        """The buffered events after *seq*, oldest first, with the bodies still held;
        None when the buffer no longer reaches back to *seq*."""
        oldest = self._buffer[0].seq if self._buffer else self.head + 1
        if seq < oldest - 1 or seq > self.head:
            return None
        skip = seq - oldest + 1
        return [
            event if event.seq not in self._bodies
            else dataclasses.replace(event, data=self._bodies[event.seq])
            for n, event in enumerate(self._buffer) if n >= skip
        ]

    @property
    def buffered(self) -> tuple[int, int]:
        """(events, body bytes) the resume buffer holds."""
        return len(self._buffer), self._body_bytes

    def close_all(self) -> None:
        """Shutdown: every stream ends after what it already has queued."""
        self.closed = True
        for sub in list(self._subs):
            sub.close()


@dataclass
class Resumption:
    """How a stream starts: what the client missed, or why it must re-read.

    ``overlap`` collects the journal keys the replay sent that live events may
    carry again; the stream skips those (the replay keeps it to that window).
    """

    missed: AsyncIterator[Event] | None = None
    reset: bytes | None = None
    reset_id: str | None = None  # the resume point the reset gives the client
    how: str = "live"  # buffer, journal, reset_<reason>: for the metric
    overlap: set[str] = field(default_factory=set)


# (last_event_id, scope, head at subscribe) -> how to start.
Resume = Callable[[str | None, str, int], Awaitable[Resumption]]
# An event whose body was not fetched -> the same event with it (None: gone).
Fill = Callable[[Event], Awaitable[Event | None]]


class StreamStalled(Exception):
    """A write to a stream's client waited longer than the hub's write timeout."""


class StreamSourceFailed(Exception):
    """S3 failed while the stream replayed what its client missed."""


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
    resume: Resume,
    fill: Fill,
    heartbeat: float = DEFAULT_HEARTBEAT_SECONDS,
    on_prepared: Callable[[], None] | None = None,
) -> web.StreamResponse:
    """Serve one SSE stream until the client leaves or the hub closes.

    The subscription starts before the replay so nothing published meanwhile
    falls between the two: the replay covers what was published up to the
    subscription, the queue everything after it. The replay is streamed as it
    is read, so the first missed event goes out after a batch, not the backlog.
    """
    sub = hub.subscribe(scope)
    try:
        plan = await resume(last_event_id, scope, hub.head)
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
                                                 reset=plan.reset is not None))
        timeout = hub.write_timeout
        last_sent = last_event_id  # what the client has: where it would resume
        try:
            await _write(response, b"retry: %d\n: connected\n\n" % RECONNECT_MS, timeout)
            if plan.reset is not None:
                await _write(response, plan.reset, timeout)
                last_sent = plan.reset_id
            if plan.missed is not None:
                async for old in plan.missed:
                    await _write(response, old.encode(), timeout)
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
                if event.key in plan.overlap:
                    continue
                if event.data is None:
                    filled = await fill(event)
                    if filled is None or not filled.concerns(scope):
                        continue
                    event = filled
                await _write(response, event.encode(), timeout)
                last_sent = event.id
            if sub.overflowed:
                logger.warning("watch closed: client too slow; it resumes with Last-Event-ID",
                               extra=fields(entity_path=scope, last_event_id=last_sent))
                await _write(response, reset_event(last_sent, "overflow"), timeout)
        except StreamSourceFailed as exc:
            # S3 failed to serve what the client missed: it resumes from what it has.
            logger.warning("watch closed: storage unavailable; the client resumes later",
                           extra=fields(entity_path=scope, error=str(exc),
                                        last_event_id=last_sent))
            with contextlib.suppress(ConnectionResetError, StreamStalled):
                await _write(response, reset_event(last_sent, "storage-unavailable"), timeout)
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
