"""Every operator metric, defined once (Prometheus naming: base units, ``_total``)."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

import prometheus_client

from amfs_operator.spec import PHASES

# success: the reconcile finished and the status says how things are (Ready or not);
# permanent_error: refused until the spec changes (InvalidSpec, PrefixConflict, ...);
# error: an exception (the Kubernetes API failed); kopf retries it.
RESULTS = ("success", "permanent_error", "error")
PROBE_FAILURE_REASONS = ("BucketNotFound", "AccessDenied", "EndpointUnreachable",
                         "S3Unavailable", "CredentialsMissing", "S3Error")

RECONCILE_TOTAL = prometheus_client.Counter(
    "amfs_operator_reconcile_total",
    "AMFSMemory reconciliations, by result (success, permanent_error, error).",
    ["result"],
)
RECONCILE_DURATION = prometheus_client.Histogram(
    "amfs_operator_reconcile_duration_seconds",
    "Time to reconcile one AMFSMemory (Kubernetes writes and the S3 probe).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
MEMORIES = prometheus_client.Gauge(
    "amfs_operator_memories",
    "AMFSMemory resources known to this operator, by status phase.",
    ["phase"],
)
BUCKET_PROBE_FAILURES = prometheus_client.Counter(
    "amfs_operator_bucket_probe_failures_total",
    "Bucket probes that failed, by condition reason.",
    ["reason"],
)
for _result in RESULTS:
    RECONCILE_TOTAL.labels(_result)
for _reason in PROBE_FAILURE_REASONS:
    BUCKET_PROBE_FAILURES.labels(_reason)


class PhaseBook:
    """Which phase each memory is in; keeps ``amfs_operator_memories`` exact."""

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._publish()

    def set(self, namespace: str, name: str, phase: str) -> None:
        with self._lock:
            self._phases[(namespace, name)] = phase
            self._publish()

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._phases.pop((namespace, name), None)
            self._publish()

    def _publish(self) -> None:
        counts = dict.fromkeys(PHASES, 0)
        for phase in self._phases.values():
            counts[phase] = counts.get(phase, 0) + 1
        for phase, count in counts.items():
            MEMORIES.labels(phase).set(count)


def serve(port: int, address: str = "0.0.0.0") -> WSGIServer:
    """Start the metrics endpoint in a thread (stop it with ``shutdown()``)."""
    server, _thread = prometheus_client.start_http_server(port, addr=address)
    return server
