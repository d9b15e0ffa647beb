"""Every metric a dashboard or an alert queries is one a running sidecar or operator exports.

The sidecar and the operator run as real processes (``python -m amfs_sidecar`` and
``python -m amfs_operator``, what the console scripts call) against moto's S3
server and the Kubernetes API emulator; their ``/metrics`` are scraped over HTTP.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.chart.certs import chart_certificate
from tests.chart.conftest import ALL_FEATURES, ROOT, Render, objects
from tests.fixtures.kubernetes import EmulatorThread
from tests.fixtures.s3 import TEST_CREDENTIALS, free_port

DASHBOARDS = ROOT / "charts" / "amfs" / "dashboards"
# Series Prometheus makes itself, not the exporters.
PROMETHEUS_SERIES = {"up"}
PROMQL_FUNCTIONS = {
    "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "histogram_quantile",
    "time", "absent", "vector", "label_values", "clamp_min", "topk",
}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                   "unless", "bool", "offset"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
            "gauge": ("",), "summary": ("_sum", "_count", ""), "untyped": ("",)}


def queried_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression (functions, keywords, labels left out)."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values and strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # selectors
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\blabel_values\(([^,)]*),\s*\w+\s*\)", r"label_values(\1)", expr)  # Grafana
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?", expr):
        word, call = match.group(0).rstrip("( \t\n"), match.group(1)
        if call and word not in PROMQL_KEYWORDS:
            assert word in PROMQL_FUNCTIONS, f"unknown PromQL function {word} in {expr}"
        elif not call and word not in PROMQL_KEYWORDS and not re.fullmatch(r"[0-9.eE]+", word):
            names.add(word)
    return names


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                yield f"{path.name}: {panel['title']}", target["expr"]
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                yield f"{path.name}: ${variable['name']}", variable["query"]["query"]


def alert_expressions(render: Render) -> Iterator[tuple[str, str]]:
    for doc in objects(render(ALL_FEATURES)):
        if doc["kind"] == "PrometheusRule":
            for group in doc["spec"]["groups"]:
                for rule in group["rules"]:
                    yield rule["alert"], rule["expr"]


def exported(text: str) -> set[str]:
    """Every series name a scrape of *text* yields, declared families included."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def fetch(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, ConnectionError):
        return None


def environment(**extra: str) -> dict[str, str]:
    paths = [str(ROOT / "sidecar"), str(ROOT / "operator"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, **TEST_CREDENTIALS, "PYTHONPATH": os.pathsep.join(p for p in paths if p),
            **extra}


def process(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture(scope="module")
def sidecar_metrics(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import boto3

    bucket = "metrics-names"
    boto3.client("s3", endpoint_url=s3_endpoint, **{
        "aws_access_key_id": "testing", "aws_secret_access_key": "testing",
        "region_name": "us-east-1"}).create_bucket(Bucket=bucket)
    workdir = Path(tmp_path_factory.mktemp("sidecar"))
    socket_dir = Path(f"/tmp/amfs-metrics-{os.getpid()}")
    socket_dir.mkdir(exist_ok=True)
    port = free_port()
    env = environment(AMFS_S3_BUCKET=bucket, AMFS_S3_ENDPOINT=s3_endpoint,
                      AMFS_MEMORY_NAME="team-memory", AMFS_MEMORY_NAMESPACE="agents",
                      AMFS_MEMORY_LIMIT_BYTES="268435456")  # as the injector sets it
    proc = process(["-m", "amfs_sidecar", "--socket", str(socket_dir / "amfs.sock"),
                    "--metrics-host", "127.0.0.1", "--metrics-port", str(port),
                    "--poll-interval", "0.2"], env, workdir / "sidecar.log")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for("the sidecar to be ready",
                 lambda: fetch(f"{base}/ready") or proc.poll() is not None)
        assert proc.poll() is None, (workdir / "sidecar.log").read_text()[-3000:]
        yield wait_for("a scrape with a finished poll", lambda: _polled(fetch(f"{base}/metrics")))
    finally:
        stop(proc)
        for leftover in socket_dir.iterdir():
            leftover.unlink()
        socket_dir.rmdir()


def _polled(text: str | None) -> str | None:
    return text if text and "amfs_sidecar_poll_duration_seconds_count" in text else None


@pytest.fixture(scope="module")
def operator_metrics(k8s_emulator: EmulatorThread,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = Path(tmp_path_factory.mktemp("operator"))
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": k8s_emulator.url}}],
        "users": [{"name": "operator", "user": {"token": "operator-token"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator",
                                                      "user": "operator"}}],
    }))
    chart_certificate(workdir / "certs")
    metrics_port, health_port = free_port(), free_port()
    # One empty namespace: this operator must not touch other tests' objects.
    proc = process(["-m", "amfs_operator", "--namespace", "metric-names-probe",
                    "--listen-host", "127.0.0.1",
                    "--metrics-port", str(metrics_port), "--health-port", str(health_port),
                    "--webhook-port", str(free_port()), "--webhook-cert-dir",
                    str(workdir / "certs")],
                   environment(KUBECONFIG=str(kubeconfig)), workdir / "operator.log")
    try:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        text = wait_for("the operator's metrics",
                        lambda: fetch(url) or (proc.poll() is not None and "exited"))
        assert proc.poll() is None and text != "exited", \
            (workdir / "operator.log").read_text()[-3000:]
        yield text
    finally:
        stop(proc)


def test_the_expression_parser_finds_metric_names() -> None:
    assert queried_metrics(
        'histogram_quantile(0.99, sum by (memory, le) (rate(amfs_x_bucket{a=~"$b"}'
        '[$__rate_interval]))) / on (pod) up == 1 or vector(0)'
    ) == {"amfs_x_bucket", "up"}
    assert queried_metrics('label_values(amfs_y{a="1"}, memory)') == {"amfs_y"}


def test_dashboards_and_alerts_query_only_exported_metrics(
    render: Render, sidecar_metrics: str, operator_metrics: str
) -> None:
    available = exported(sidecar_metrics) | exported(operator_metrics) | PROMETHEUS_SERIES
    expressions = [*dashboard_expressions(), *alert_expressions(render)]
    assert len(expressions) > 25
    used: set[str] = set()
    for where, expr in expressions:
        names = queried_metrics(expr)
        assert names, f"{where}: no metric in {expr!r}"
        missing = names - available
        assert not missing, f"{where}: {sorted(missing)} not exported (query: {expr})"
        used |= names
    # The contract's metrics are all on show somewhere.
    for name in ("amfs_sidecar_poll_lag_seconds_bucket", "amfs_sidecar_watchers",
                 "amfs_sidecar_s3_requests_total", "amfs_sidecar_request_duration_seconds_bucket",
                 "amfs_sidecar_last_poll_success_timestamp_seconds", "amfs_sidecar_objects",
                 "amfs_operator_memories", "amfs_operator_reconcile_total",
                 "amfs_operator_bucket_probe_failures_total"):
        assert name in used
    # Every series the sidecar exports from its first scrape, and the stream resumes (no
    # series until a stream resumes), is on a dashboard; the ones an alert watches, too.
    sidecar_series = {n for n in exported(sidecar_metrics)
                      if n.startswith("amfs_sidecar_") and not n.endswith(("_sum", "_count"))}
    assert {"amfs_sidecar_stream_resumes_total", "amfs_sidecar_connections",
            "amfs_sidecar_connections_closed_total", "amfs_sidecar_resident_memory_bytes",
            "amfs_sidecar_memory_limit_bytes"} <= sidecar_series
    on_dashboards = set().union(*(queried_metrics(e) for _, e in dashboard_expressions()))
    assert sidecar_series - on_dashboards == set()
    alerted = set().union(*(queried_metrics(e) for _, e in alert_expressions(render)))
    assert {"amfs_sidecar_journal_pending_records", "amfs_sidecar_storage_clock_offset_seconds",
            "amfs_sidecar_journal_future_records_total",
            "amfs_sidecar_connections_closed_total", "amfs_sidecar_resident_memory_bytes",
            "amfs_sidecar_memory_limit_bytes"} <= alerted


def test_sidecar_series_carry_the_memory_labels_the_dashboards_filter_on(
    sidecar_metrics: str,
) -> None:
    for family in text_string_to_metric_families(sidecar_metrics):
        if family.name.startswith("amfs_sidecar_"):
            for sample in family.samples:
                assert sample.labels.get("memory") == "team-memory"
                assert sample.labels.get("memory_namespace") == "agents"
