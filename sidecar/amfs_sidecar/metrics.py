"""Every sidecar metric, defined once on the sidecar's own registry.

Names and labels are DESIGN.md's. Every series also carries the constant labels
``memory`` and ``memory_namespace`` (env ``AMFS_MEMORY_NAME`` /
``AMFS_MEMORY_NAMESPACE``, set by the injector) so one Prometheus can tell the
sidecars of different memories apart; a standalone sidecar (no injector) uses
its AMFS namespace and ``local``. Labels are bounded: routes are route
templates, operations are S3 operation names; never entity paths or keys.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

from amfs_sidecar import process_memory

ENV_MEMORY_NAME = "AMFS_MEMORY_NAME"
ENV_MEMORY_NAMESPACE = "AMFS_MEMORY_NAMESPACE"
# What a sidecar outside Kubernetes calls its memory's namespace.
STANDALONE_MEMORY_NAMESPACE = "local"

CONST_LABELS = ("memory", "memory_namespace")
OBJECT_KINDS = ("entries", "versions", "outcomes")
# The adapter's operations, created at start so error ratios read 0, not "No data".
S3_OPERATIONS = ("GetObject", "PutObject", "ListObjectsV2", "HeadObject", "HeadBucket",
                 "DeleteObject")
S3_OUTCOMES = ("success", "error")
CONNECTION_CLOSE_REASONS = ("refused", "header_timeout")

# Poll lag is bounded below by the poll interval (default 5 s), so the buckets
# reach well past it; request latency over a local socket is sub-millisecond.
POLL_LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0)
POLL_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REQUEST_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


class _WithoutCreated:
    """The registry minus ``*_created`` samples: no dashboard or alert reads them,
    and they were one series in seven. Local to this registry, unlike
    prometheus_client's process-wide ``disable_created_metrics()``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class SidecarMetrics:
    """The sidecar's metrics and the few verbs that update them."""

    def __init__(self, memory: str = "default",
                 memory_namespace: str = STANDALONE_MEMORY_NAMESPACE) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._const = (memory, memory_namespace)
        r = self.registry
        self.poll_lag = Histogram(
            "amfs_sidecar_poll_lag_seconds",
            "Time from a change being written (journal timestamp) to this sidecar observing it.",
            CONST_LABELS, buckets=POLL_LAG_BUCKETS, registry=r,
        )
        self.poll_duration = Histogram(
            "amfs_sidecar_poll_duration_seconds",
            "Duration of one journal poll, including the GETs of new journal records.",
            CONST_LABELS, buckets=POLL_DURATION_BUCKETS, registry=r,
        )
        self.poll_interval = Gauge(
            "amfs_sidecar_poll_interval_seconds",
            "The configured journal poll interval (spec.sidecar.pollInterval).",
            CONST_LABELS, registry=r,
        )
        self.last_poll_success = Gauge(
            "amfs_sidecar_last_poll_success_timestamp_seconds",
            "Unix time of the last successful journal poll; absent until the first one.",
            CONST_LABELS, registry=r,
        )
        self.objects = Gauge(
            "amfs_sidecar_objects",
            "Objects known to the index: entries (current keys), versions, outcomes.",
            (*CONST_LABELS, "kind"), registry=r,
        )
        self.s3_requests = Counter(
            "amfs_sidecar_s3_requests",
            "S3 request attempts made by the adapter (retries included), by operation and "
            "outcome (success, error, not_found, conflict).",
            (*CONST_LABELS, "operation", "outcome"), registry=r,
        )
        self.requests = Counter(
            "amfs_sidecar_requests",
            "API requests served, by route template, method and status code.",
            (*CONST_LABELS, "route", "method", "code"), registry=r,
        )
        self.request_duration = Histogram(
            "amfs_sidecar_request_duration_seconds",
            "API request latency by route template and method (for streams: time to the "
            "first byte, never the stream's lifetime).",
            (*CONST_LABELS, "route", "method"), buckets=REQUEST_BUCKETS, registry=r,
        )
        self.watchers = Gauge(
            "amfs_sidecar_watchers", "Open watch streams (SSE).", CONST_LABELS, registry=r
        )
        self.conditional_writes = Gauge(
            "amfs_sidecar_conditional_writes_supported",
            "1 if the provider honours If-None-Match on PUT (no lost updates), else 0.",
            CONST_LABELS, registry=r,
        )
        self.future_records = Counter(
            "amfs_sidecar_journal_future_records",
            "Journal records stamped well ahead of the storage's clock (a writer's clock is "
            "wrong); each is delivered once, and pollers do not follow it.",
            CONST_LABELS, registry=r,
        )
        self.stream_resumes = Counter(
            "amfs_sidecar_stream_resumes",
            "Streams opened with Last-Event-ID, by how they resumed: buffer (exact), journal "
            "(replayed), or reset_<reason> (the client was told to re-read).",
            (*CONST_LABELS, "how"), registry=r,
        )
        self.storage_clock_offset = Gauge(
            "amfs_sidecar_storage_clock_offset_seconds",
            "The storage's clock minus this pod's, estimated from S3 Date headers.",
            CONST_LABELS, registry=r,
        )
        self.pending_journal_records = Gauge(
            "amfs_sidecar_journal_pending_records",
            "This sidecar's journal records that S3 refused, waiting to be written again.",
            CONST_LABELS, registry=r,
        )
        self.connections = Gauge(
            "amfs_sidecar_connections",
            "Open client connections, by listener (api: the socket and --listen; metrics).",
            (*CONST_LABELS, "listener"), registry=r,
        )
        self.resident_memory = Gauge(
            "amfs_sidecar_resident_memory_bytes",
            "Resident memory of the sidecar process; its index grows with the memory's "
            "entries (about 0.5 KiB each).",
            CONST_LABELS, registry=r,
        )
        self.memory_limit = Gauge(
            "amfs_sidecar_memory_limit_bytes",
            "The sidecar container's memory limit (env AMFS_MEMORY_LIMIT_BYTES, set by the "
            "injector from limits.memory); absent when not given.",
            CONST_LABELS, registry=r,
        )
        self.connections_closed = Counter(
            "amfs_sidecar_connections_closed",
            "Client connections the sidecar closed on its own, by listener and reason "
            "(refused: over --max-connections; header_timeout: no request head in time).",
            (*CONST_LABELS, "listener", "reason"), registry=r,
        )
        # Series that must exist from the first scrape, so alerts see 0 not absence.
        # The last-poll timestamp is left out on purpose: 0 would read as 56 years ago.
        self.pending_journal_records.labels(*self._const).set(0)
        self.resident_memory.labels(*self._const).set_function(
            lambda: float(process_memory.resident_bytes()))
        self.future_records.labels(*self._const).inc(0)
        self.watchers.labels(*self._const).set(0)
        for kind in OBJECT_KINDS:
            self.objects.labels(*self._const, kind).set(0)
        for operation in S3_OPERATIONS:
            for outcome in S3_OUTCOMES:
                self.s3_requests.labels(*self._const, operation, outcome)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *,
                 default_memory: str = "default") -> SidecarMetrics:
        """Labels from the injector's env; *default_memory* (the AMFS namespace) without it."""
        env = os.environ if env is None else env
        return cls(env.get(ENV_MEMORY_NAME) or default_memory,
                   env.get(ENV_MEMORY_NAMESPACE) or STANDALONE_MEMORY_NAMESPACE)

    def set_memory_limit(self, limit_bytes: int | None) -> None:
        """The container's memory limit; None leaves the series out (no limit known)."""
        if limit_bytes is not None:
            self.memory_limit.labels(*self._const).set(limit_bytes)

    @property
    def labels(self) -> dict[str, str]:
        return dict(zip(CONST_LABELS, self._const, strict=True))

    # -- poller ------------------------------------------------------------

    def set_poll_interval(self, seconds: float) -> None:
        self.poll_interval.labels(*self._const).set(seconds)

    def observe_poll_lag(self, seconds: float) -> None:
        # A writer's clock ahead of ours gives a negative lag; count it as zero.
        self.poll_lag.labels(*self._const).observe(max(seconds, 0.0))

    def count_future_records(self, count: int) -> None:
        if count > 0:
            self.future_records.labels(*self._const).inc(count)

    def count_stream_resume(self, how: str) -> None:
        self.stream_resumes.labels(*self._const, how).inc()

    def bind_pending_journal_records(self, count: Callable[[], int]) -> None:
        self.pending_journal_records.labels(*self._const).set_function(lambda: float(count()))

    def bind_storage_clock_offset(self, offset: Callable[[], float]) -> None:
        self.storage_clock_offset.labels(*self._const).set_function(offset)

    def observe_poll_duration(self, seconds: float) -> None:
        self.poll_duration.labels(*self._const).observe(seconds)

    def mark_poll_success(self, unix_time: float) -> None:
        self.last_poll_success.labels(*self._const).set(unix_time)

    # -- index -------------------------------------------------------------

    def bind_objects(self, count: Callable[[str], int]) -> None:
        """Read object counts from *count(kind)* at scrape time (the index, never S3)."""
        for kind in OBJECT_KINDS:
            self.objects.labels(*self._const, kind).set_function(
                lambda kind=kind: float(count(kind))  # type: ignore[misc]
            )

    def bind_watchers(self, count: Callable[[], int]) -> None:
        self.watchers.labels(*self._const).set_function(lambda: float(count()))

    def set_conditional_writes(self, supported: bool) -> None:
        self.conditional_writes.labels(*self._const).set(1 if supported else 0)

    # -- S3 and API --------------------------------------------------------

    def count_s3_request(self, operation: str, outcome: str) -> None:
        """The adapter's ``request_observer``: one call per attempt."""
        self.s3_requests.labels(*self._const, operation, outcome).inc()

    def observe_request(self, method: str, route: str, code: int, seconds: float) -> None:
        self.requests.labels(*self._const, route, method, str(code)).inc()
        self.request_duration.labels(*self._const, route, method).observe(seconds)

    def bind_connections(self, listener: str, count: Callable[[], int]) -> None:
        self.connections.labels(*self._const, listener).set_function(lambda: float(count()))
        for reason in CONNECTION_CLOSE_REASONS:
            self.connections_closed.labels(*self._const, listener, reason)

    def count_connection_closed(self, listener: str, reason: str) -> None:
        self.connections_closed.labels(*self._const, listener, reason).inc()

    def render(self) -> bytes:
        return generate_latest(_WithoutCreated(self.registry))  # type: ignore[arg-type]
