"""Every sidecar metric of DESIGN.md, on the sidecar's own registry, with constant labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from amfs_sidecar.metrics import SidecarMetrics

DESIGN_METRICS = {
    "amfs_sidecar_poll_lag_seconds": "histogram",
    "amfs_sidecar_poll_duration_seconds": "histogram",
    "amfs_sidecar_last_poll_success_timestamp_seconds": "gauge",
    "amfs_sidecar_objects": "gauge",
    "amfs_sidecar_s3_requests": "counter",
    "amfs_sidecar_requests": "counter",
    "amfs_sidecar_request_duration_seconds": "histogram",
    "amfs_sidecar_watchers": "gauge",
    "amfs_sidecar_conditional_writes_supported": "gauge",
}


def families(metrics: SidecarMetrics) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}


def sample(metrics: SidecarMetrics, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def test_every_design_metric_exists_with_its_type_and_constant_labels() -> None:
    metrics = SidecarMetrics("orders", "team-a")
    metrics.observe_poll_lag(1.0)
    metrics.observe_poll_duration(0.1)
    metrics.count_s3_request("PutObject", "success")
    metrics.observe_request("/api/v1/entries", 201, 0.002)
    metrics.set_conditional_writes(True)
    found = families(metrics)
    for name, kind in DESIGN_METRICS.items():
        assert name in found, name
        family = found[name]
        assert family.type == kind, name  # type: ignore[attr-defined]
        for s in family.samples:  # type: ignore[attr-defined]
            assert (s.labels["memory"], s.labels["memory_namespace"]) == ("orders", "team-a")


def test_constant_labels_come_from_the_injectors_env() -> None:
    metrics = SidecarMetrics.from_env({"AMFS_MEMORY_NAME": "m", "AMFS_MEMORY_NAMESPACE": "ns"})
    assert sample(metrics, "amfs_sidecar_watchers", memory="m", memory_namespace="ns") == 0
    assert sample(SidecarMetrics.from_env({}), "amfs_sidecar_watchers", memory="") == 0


def test_gauges_read_their_sources_at_scrape_time() -> None:
    metrics = SidecarMetrics()
    counts = {"entries": 1, "versions": 2, "outcomes": 3}
    watchers = [0]
    metrics.bind_objects(lambda kind: counts[kind])
    metrics.bind_watchers(lambda: watchers[0])
    assert sample(metrics, "amfs_sidecar_objects", kind="versions") == 2
    counts["versions"] = 7
    watchers[0] = 4
    assert sample(metrics, "amfs_sidecar_objects", kind="versions") == 7
    assert sample(metrics, "amfs_sidecar_watchers") == 4


def test_negative_lag_from_clock_skew_counts_as_zero() -> None:
    metrics = SidecarMetrics()
    metrics.observe_poll_lag(-3.0)
    assert sample(metrics, "amfs_sidecar_poll_lag_seconds_sum") == 0.0
    assert sample(metrics, "amfs_sidecar_poll_lag_seconds_count") == 1.0


def test_requests_are_counted_by_route_and_code() -> None:
    metrics = SidecarMetrics()
    metrics.observe_request("/api/v1/stats", 200, 0.001)
    metrics.observe_request("/api/v1/stats", 200, 0.001)
    metrics.observe_request("/api/v1/stats", 503, 0.001)
    assert sample(metrics, "amfs_sidecar_requests_total", route="/api/v1/stats", code="200") == 2
    assert sample(metrics, "amfs_sidecar_requests_total", route="/api/v1/stats", code="503") == 1
    assert sample(metrics, "amfs_sidecar_request_duration_seconds_count",
                  route="/api/v1/stats") == 3
