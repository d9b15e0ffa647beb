"""Every sidecar metric of DESIGN.md, on the sidecar's own registry, with constant labels."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from amfs_sidecar import process_memory
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
    "amfs_sidecar_poll_interval_seconds": "gauge",
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
    metrics.observe_request("POST", "/api/v1/entries", 201, 0.002)
    metrics.set_conditional_writes(True)
    metrics.set_poll_interval(5.0)
    metrics.mark_poll_success(1.7e9)
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



def test_a_standalone_sidecar_is_named_by_its_amfs_namespace_and_local() -> None:
    metrics = SidecarMetrics.from_env({}, default_memory="production")
    assert sample(metrics, "amfs_sidecar_watchers", memory="production",
                  memory_namespace="local") == 0
    # Empty values (an injector without the fields) are no better than none.
    metrics = SidecarMetrics.from_env({"AMFS_MEMORY_NAME": "", "AMFS_MEMORY_NAMESPACE": ""},
                                      default_memory="default")
    assert metrics.labels == {"memory": "default", "memory_namespace": "local"}


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
    metrics.observe_request("GET", "/api/v1/outcomes", 200, 0.001)
    metrics.observe_request("GET", "/api/v1/outcomes", 200, 0.001)
    metrics.observe_request("POST", "/api/v1/outcomes", 503, 0.001)
    route = "/api/v1/outcomes"
    assert sample(metrics, "amfs_sidecar_requests_total", route=route, method="GET",
                  code="200") == 2
    assert sample(metrics, "amfs_sidecar_requests_total", route=route, method="POST",
                  code="503") == 1
    assert sample(metrics, "amfs_sidecar_requests_total", route=route, method="POST",
                  code="200") is None
    assert sample(metrics, "amfs_sidecar_request_duration_seconds_count", route=route,
                  method="GET") == 2


def test_no_created_series_are_exported() -> None:
    metrics = SidecarMetrics()
    metrics.observe_request("GET", "/api/v1/stats", 200, 0.001)
    metrics.observe_poll_lag(1.0)
    text = metrics.render().decode()
    assert "_total{" in text and "_bucket{" in text
    assert "_created" not in text


def test_the_last_poll_timestamp_is_absent_until_the_first_success() -> None:
    metrics = SidecarMetrics()
    name = "amfs_sidecar_last_poll_success_timestamp_seconds"
    assert sample(metrics, name) is None
    metrics.mark_poll_success(1_700_000_000.0)
    assert sample(metrics, name) == 1_700_000_000.0


def test_s3_error_series_exist_at_zero_before_any_request() -> None:
    metrics = SidecarMetrics()
    for operation in ("GetObject", "PutObject", "ListObjectsV2", "HeadBucket"):
        for outcome in ("success", "error"):
            assert sample(metrics, "amfs_sidecar_s3_requests_total", operation=operation,
                          outcome=outcome) == 0


def test_resident_memory_is_read_at_scrape_time_and_the_limit_only_when_known() -> None:
    metrics = SidecarMetrics()
    resident = sample(metrics, "amfs_sidecar_resident_memory_bytes")
    assert resident is not None and resident > 10 * 1024 * 1024  # a Python process, at least
    assert sample(metrics, "amfs_sidecar_memory_limit_bytes") is None
    metrics.set_memory_limit(None)
    assert sample(metrics, "amfs_sidecar_memory_limit_bytes") is None
    metrics.set_memory_limit(268435456)
    assert sample(metrics, "amfs_sidecar_memory_limit_bytes", memory="default",
                  memory_namespace="local") == 268435456
    hoard = bytearray(64 * 1024 * 1024)  # touched: resident
    try:
        grown = sample(metrics, "amfs_sidecar_resident_memory_bytes")
        assert grown is not None and grown >= resident + 60 * 1024 * 1024
    finally:
        del hoard


def test_resident_bytes_is_statms_second_field_in_pages(tmp_path: Path) -> None:
    statm = tmp_path / "statm"
    statm.write_text("5000 1234 300 10 0 900 0\n")
    assert process_memory.resident_bytes(statm) == 1234 * os.sysconf("SC_PAGE_SIZE")
