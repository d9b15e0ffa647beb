"""Every dashboard target and every alert on a real Prometheus, scraping a live sidecar and a
live operator, in health and during an S3 outage (issue 14).

Real parts throughout: ``python -m amfs_sidecar`` processes talking to moto's S3 server
through the fault proxy, ``python -m amfs_operator`` against the Kubernetes API emulator,
and Debian's ``prometheus`` on 127.0.0.1 (1 s scrapes and rule evaluations, the chart's
rules with every ``for`` at 0 s). Each phase waits, with a deadline, until every panel shows
what it should; what they showed is printed at the end (``pytest -s``).

Phases: health (traffic, another pod writing, a watch stream closed and one open, two
streams resumed); trouble (S3 refuses the sidecar's journal PUTs, a writer with a wrong clock
journals a record ten minutes ahead, agents crowd the sidecar past --max-connections, and a
sidecar whose pod clock runs two minutes fast, under libfaketime, with a memory limit below
its resident memory); S3 outage (every S3
connection of the sidecar reset, plus a memory whose endpoint is down); a second sidecar that
never syncs; the first sidecar killed; every sidecar gone; the operator gone.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from amfs_core.models import MemoryEntry, Provenance

from amfs_s3.adapter import S3Adapter
from amfs_s3.config import S3Settings
from amfs_sidecar.client import SidecarAdapter
from tests.chart.certs import chart_certificate
from tests.chart.conftest import Render
from tests.chart.test_metric_names import environment, fetch, process, stop
from tests.fixtures.kubernetes import Cluster
from tests.fixtures.s3 import free_port
from tests.fixtures.s3_proxy import FaultProxy
from tests.fixtures.sidecar import SidecarProcess, short_socket_dir, sidecar_env, spawn_sidecar
from tests.prometheus import dashboards
from tests.prometheus.server import Prometheus, wait_for
from tests.prometheus.tools import binary, rule_groups, write_rule_file

SIDECAR_JOB = "amfs-system/amfs-sidecars"  # the chart's PodMonitor job (release amfs)
OPERATOR_JOB = "amfs-metrics"
OVERVIEW, SIDECAR = "memory-overview.json", "sidecar.json"
# Grafana picks $__rate_interval from the time range; these are what a short range gives.
RATE_INTERVAL = {OVERVIEW: "2m", SIDECAR: "10s"}
POLL_INTERVAL = 0.5
STALE_INTERVALS, STALE_MIN_SECONDS = 16, 5  # stale after 8 s of a 0.5 s poll interval
STALE_AFTER = max(POLL_INTERVAL * STALE_INTERVALS, STALE_MIN_SECONDS)
ALERT_NAMES = ("operatorAbsent", "memoryNotReady", "sidecarDown", "sidecarsAbsent",
               "neverSynced", "pollLagHigh", "pollStale", "s3ErrorRateHigh", "apiLatencyHigh",
               "clockOffset", "futureRecords", "connectionsRefused", "memoryNearLimit")
# The chart's thresholds, every `for` 0 s so that a phase need not wait minutes.
LIVE_VALUES = {"metrics": {"prometheusRule": {"enabled": True, "alerts": {
    **{name: {"for": "0s"} for name in ALERT_NAMES},
    "pollStale": {"for": "0s", "intervals": STALE_INTERVALS, "minSeconds": STALE_MIN_SECONDS},
    # A healthy write's p99 reaches 0.5 s on a busy 2-core test machine; the alert's
    # own tests are promtool's (rules_test.yaml).
    "apiLatencyHigh": {"for": "0s", "thresholdSeconds": 2.5},
    # A busy pod's records on their way out are seen now and then: three evaluations in a
    # row above 0 are records S3 refused (the chart waits 5m for the same reason).
    "journalPending": {"for": "3s"},
}}}}
ALERTS = ("AMFSOperatorAbsent", "AMFSMemoryNotReady", "AMFSSidecarDown", "AMFSSidecarsAbsent",
          "AMFSSidecarNeverSynced", "AMFSSidecarPollLagHigh", "AMFSSidecarPollStale",
          "AMFSSidecarS3ErrorRateHigh", "AMFSSidecarAPILatencyHigh", "AMFSSidecarJournalPending",
          "AMFSSidecarClockOffsetHigh", "AMFSSidecarJournalFutureRecords",
          "AMFSSidecarConnectionsRefused", "AMFSSidecarMemoryNearLimit")
MEMORY, MEMORY_NS = "team-memory", "agents"
# The sidecar pods, as the panels name them; C's clock runs two minutes fast.
A, B, C = "agents/agent-0", "agents/agent-1", "agents/agent-2"
MAX_CONNECTIONS = 16  # sidecar A's API connections; the traffic holds about 8
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
CLOCK_AHEAD_SECONDS = 120
# The container memory limits the sidecars are told of, as the injector passes limits.memory:
# room to spare, and for C (trouble) less than any Python process needs.
MEMORY_LIMIT = 4 * 1024**3
SMALL_MEMORY_LIMIT = 32 * 1024**2

Observed = dict[str, float]
Check = Callable[[Observed], bool]


# ---- what each panel should show -------------------------------------------------------------


def equals(value: float, legend: str = "") -> Check:
    return lambda seen: seen.get(legend) == value


def above(value: float, *legends: str) -> Check:
    return lambda seen: all(seen.get(legend, math.nan) > value for legend in legends)


def all_equal(value: float, at_least: int = 1) -> Check:
    return lambda seen: len(seen) >= at_least and all(v == value for v in seen.values())


def finite_positive(*legends: str) -> Check:
    return lambda seen: all(math.isfinite(seen.get(legend, math.nan))
                            and seen[legend] > 0 for legend in legends)


def no_value(legend: str) -> Check:
    """What a rate-based panel shows when nothing happened in its window: no number."""
    return lambda seen: not math.isfinite(seen.get(legend, math.nan))


def both(*checks: Check) -> Check:
    return lambda seen: all(check(seen) for check in checks)


HEALTHY_OVERVIEW: dict[str, Check] = {
    "Ready #A": equals(1),
    "Not ready #A": equals(0),
    "Deleting #A": equals(0),
    "Reconcile errors (1h) #A": equals(0),
    "Memories by phase #A": both(equals(1, "Ready"), equals(0, "Pending"), equals(0, "Failed"),
                                 equals(0, "Deleting")),
    "Bucket probe failures #A": all_equal(0, at_least=6),
    "Reconcile rate by result #A": both(above(0, "success"), equals(0, "error"),
                                        equals(0, "permanent_error")),
    "Reconcile errors #A": all_equal(0, at_least=2),
    "Reconcile duration #A": finite_positive("p50"),
    "Reconcile duration #B": finite_positive("p99"),
}
MEM = f"{MEMORY_NS}/{MEMORY}"
HEALTHY_SIDECAR: dict[str, Check] = {
    "Sidecars down #A": equals(0),
    "Sidecars never synced #A": equals(0),
    "Memories without conditional writes #A": equals(0),
    # Another pod's writes reach this sidecar: the lag is measured.
    "Poll lag p50 by memory #A": finite_positive(MEM),
    "Poll lag p99 by memory #A": finite_positive(MEM),
    "Time since last successful poll #A": lambda seen: 0 <= seen.get(A, math.nan) < STALE_AFTER,
    "Time since last successful poll #B": equals(POLL_INTERVAL, f"poll interval {MEM}"),
    "Poll duration p99 #A": finite_positive(MEM),
    "Objects by kind #A": lambda seen: (seen.get(f"{MEM} entries", 0) >= 1
                                        and seen.get(f"{MEM} versions", 0)
                                        >= seen[f"{MEM} entries"]
                                        and seen.get(f"{MEM} outcomes", 0) >= 1),
    "Active watchers #A": equals(1, MEM),
    "S3 requests by operation #A": above(0, "ListObjectsV2", "PutObject"),
    # 0 %, not "No data": the error series exist from the start.
    "S3 error rate by operation #A": lambda seen: (
        seen.get("ListObjectsV2") == 0
        and all(v == 0 for v in seen.values() if math.isfinite(v))),
    "API requests by route #A": above(0, "POST /api/v1/entries", "GET /api/v1/outcomes",
                                      "POST /api/v1/outcomes",
                                      "GET /api/v1/entries/{entity_path}/{key}"),
    "API latency p99 by route #A": finite_positive("POST /api/v1/entries"),
    # Nothing failing now (a 404 or a start-up /ready 503 leave 0 lines behind), and the
    # closed watch stream was no 500: no stream line at all.
    "API errors by route #A": lambda seen: (all(v == 0 for v in seen.values())
                                            and not any("stream" in k for k in seen)),
    # 0 from the start, not "No data".
    "Journal records pending #A": equals(0),
    "Journal records pending by pod #A": equals(0, A),
    "Journal records from the future #A": equals(0, MEM),
    # moto on this machine: within 2 s, where the sidecar trusts its own clock.
    "Storage clock offset #A": equals(0, A),
    # The metrics listener holds at least the scrape that reads it.
    "Open connections by pod #A": above(0, f"{A} api", f"{A} metrics"),
    "Connections closed by the sidecar #A": both(equals(0, "api refused"),
                                                 equals(0, "metrics refused")),
    "Stream resumes by how #A": lambda seen: "buffer" in seen and "reset_invalid" in seen,
    "Memory and its limit by pod #A": above(10 * 1024**2, f"{A} resident"),
    "Memory and its limit by pod #B": equals(MEMORY_LIMIT, f"{A} limit"),
}
OUTAGE_OVERVIEW: dict[str, Check] = {
    **HEALTHY_OVERVIEW,
    # The memory whose endpoint is down is not Ready; its probe failure is counted.
    "Not ready #A": equals(1),
    "Memories by phase #A": lambda seen: seen.get("Ready") == 1 and (
        seen.get("Pending", 0) + seen.get("Failed", 0) == 1),
    "Bucket probe failures #A": above(0, "EndpointUnreachable"),
    # Recorded, not pinned: how the broken memory's reconciles end is the operator's business.
    "Reconcile rate by result #A": lambda seen: len(seen) == 3,
    "Reconcile errors #A": lambda seen: len(seen) == 2,
    "Reconcile errors (1h) #A": lambda seen: seen.get("", -1) >= 0,
}
OUTAGE_SIDECAR: dict[str, Check] = {
    **HEALTHY_SIDECAR,
    # Nothing arrives: no lag is measured, the last poll ages past the stale threshold.
    "Poll lag p50 by memory #A": no_value(MEM),
    "Poll lag p99 by memory #A": no_value(MEM),
    "Time since last successful poll #A": above(STALE_AFTER, A),
    "Poll duration p99 #A": no_value(MEM),
    # Failing, not idle: every attempt is counted, and every one fails.
    "S3 requests by operation #A": above(0, "ListObjectsV2"),
    "S3 error rate by operation #A": equals(1, "ListObjectsV2"),
    "API requests by route #A": above(0, "POST /api/v1/entries"),
    "API latency p99 by route #A": finite_positive("POST /api/v1/entries"),
    "API errors by route #A": above(0, "POST /api/v1/entries 503"),
    # The records S3 refused in the trouble phase cannot be written now either.
    "Journal records pending #A": above(0, ""),
    "Journal records pending by pod #A": above(0, A),
}
# Grafana's $__rate_interval for a range of hours: the records from the future and the
# refusals, each a moment, stay in the window while the phase is checked.
TROUBLE_RATE_INTERVAL = "5m"
TROUBLE_SIDECAR: dict[str, Check] = {
    "Journal records pending #A": above(0, ""),
    "Journal records pending by pod #A": above(0, A),
    "Journal records from the future #A": above(0, MEM),
    "Storage clock offset #A": both(equals(0, A), lambda seen: (
        -CLOCK_AHEAD_SECONDS - 2 < seen.get(C, math.nan) < -CLOCK_AHEAD_SECONDS + 2)),
    "Open connections by pod #A": above(MAX_CONNECTIONS - 1, f"{A} api"),
    "Connections closed by the sidecar #A": both(above(0, "api refused"),
                                                 equals(0, "metrics refused")),
    "Memory and its limit by pod #B": both(equals(MEMORY_LIMIT, f"{A} limit"),
                                           equals(SMALL_MEMORY_LIMIT, f"{C} limit")),
}
KILLED_SIDECAR: dict[str, Check] = {
    "Sidecars down #A": equals(1),
    "Sidecars never synced #A": equals(1),
}


# ---- the parts --------------------------------------------------------------------------------


@dataclass
class Traffic:
    """Agents using sidecar A (writers, and a reader that also commits outcomes) and
    another pod writing straight to S3, whose changes A must pick up by polling."""

    client: SidecarAdapter
    other_pod: S3Adapter
    writers: int = 4
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        loops = [*(lambda i=i: self._writer(i) for i in range(self.writers)),
                 self._reader, self._other_pod]
        for loop in loops:
            thread = threading.Thread(target=loop, daemon=True)
            thread.start()
            self.threads.append(thread)

    def _call(self, method: str, path: str, body: Any = None) -> None:
        try:
            self.client.request(method, path, body)
        except Exception:  # the sidecar was killed under us; the loop ends with stop
            self.stop.wait(0.2)

    def _writer(self, i: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            self._call("POST", "/api/v1/entries", {"entity_path": "svc", "key": f"w{i}-{n % 5}",
                                                   "value": n, "agent_id": "agent-0"})
            self.stop.wait(0.5)

    def _reader(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            self._call("GET", "/api/v1/entries/svc/w0-1")
            self._call("GET", "/api/v1/outcomes")
            self._call("POST", "/api/v1/outcomes", {"outcome_ref": f"run-{n}",
                                                    "outcome_type": "success", "agent_id": "a"})
            self.stop.wait(0.5)

    def _other_pod(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            self.other_pod.write(MemoryEntry(
                entity_path="svc/other-pod", key=f"k{n}", value=n, version=1,
                provenance=Provenance(agent_id="agent-9", session_id="s",
                                      written_at=datetime.now(UTC))))
            self.stop.wait(0.3)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(40)


class Stream:
    """A watch stream over the socket, as `curl -N` would hold one."""

    def __init__(self, socket_path: Path, last_event_id: str | None = None) -> None:
        self.conn = SidecarAdapter(socket_path).connect(timeout=10)
        headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
        self.conn.request("GET", "/api/v1/stream?entity_path=*", headers=headers)
        self.response = self.conn.getresponse()
        assert self.response.status == 200
        assert b"connected" in self.response.readline() + self.response.readline()

    def next_id(self) -> str:
        """The id of the next event (the traffic writes all the time)."""
        while not (line := self.response.readline()).startswith(b"id: "):
            assert line, "the stream ended"
        return line[4:].decode().strip()

    def close(self) -> None:
        self.conn.close()


class Crowd:
    """Agents holding connections to the socket without a request: past the sidecar's
    --max-connections each further one is answered 503 and closed."""

    def __init__(self, socket_path: Path, count: int) -> None:
        self.sockets = []
        for _ in range(count):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(socket_path))
            self.sockets.append(sock)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def journal_record_from_the_future(client: Any, settings: S3Settings, adapter: S3Adapter,
                                   ahead_seconds: float) -> None:
    """What an older writer with a wrong clock journals: its own write, stamped with its
    own time, *ahead_seconds* ahead of the storage's."""
    adapter.write(MemoryEntry(entity_path="clock", key="wrong", value=1, version=1,
                              provenance=Provenance(agent_id="agent-9", session_id="s",
                                                    written_at=datetime.now(UTC))))
    ms = int((time.time() + ahead_seconds) * 1000)
    record = {"kind": "write", "written_at_ms": ms, "writer": "wrong-clock",
              "entity_path": "clock", "key": "wrong", "version": 1}
    client.put_object(Bucket=settings.bucket, Key=adapter.layout.journal_key(ms, "wrong-clock", 1),
                      Body=json.dumps(record).encode())


def start_sidecar(settings: S3Settings, socket_dir: Path, name: str, memory: str,
                  *args: str, wait: bool = True, env: dict[str, str] | None = None
                  ) -> tuple[SidecarProcess, int]:
    port = free_port()
    env = {**sidecar_env(settings), "AMFS_MEMORY_NAME": memory,
           "AMFS_MEMORY_NAMESPACE": MEMORY_NS, "AMFS_MEMORY_LIMIT_BYTES": str(MEMORY_LIMIT),
           **(env or {})}
    running = spawn_sidecar(settings, socket_dir / f"{name}.sock", "--metrics-port", str(port),
                            "--poll-interval", str(POLL_INTERVAL), "--heartbeat-seconds", "0.5",
                            *args, env=env, wait=wait)
    if not wait:
        wait_for(f"{name}'s metrics", lambda: fetch(f"http://127.0.0.1:{port}/metrics"))
    return running, port


@pytest.fixture
def operator_process(cluster: Cluster, tmp_path: Path) -> Iterator[tuple[Any, int]]:
    chart_certificate(tmp_path / "certs")
    port = free_port()
    # Cluster-wide, as deployed (the emulator cannot list namespaces, which -n needs);
    # other tests' namespaces are purged when they end.
    proc = process(["-m", "amfs_operator", "--listen-host", "127.0.0.1",
                    "--metrics-port", str(port),
                    "--health-port", str(free_port()), "--webhook-port", str(free_port()),
                    "--webhook-cert-dir", str(tmp_path / "certs")],
                   environment(KUBECONFIG=str(cluster.kubeconfig)), tmp_path / "operator.log")
    try:
        wait_for("the operator's metrics",
                 lambda: fetch(f"http://127.0.0.1:{port}/metrics") or proc.poll() is not None)
        assert proc.poll() is None, (tmp_path / "operator.log").read_text()[-3000:]
        yield proc, port
    finally:
        stop(proc)


@pytest.fixture
def prometheus(render: Render, tmp_path: Path) -> Iterator[Prometheus]:
    rules = write_rule_file(tmp_path / "amfs-rules.yaml", rule_groups(render, LIVE_VALUES))
    server = Prometheus(binary("prometheus"), tmp_path / "prometheus", rules, jobs={
        # A cluster label, as multi-cluster setups add by relabelling or external labels.
        SIDECAR_JOB: {"cluster": "e2e"},
        OPERATOR_JOB: {"cluster": "e2e", "namespace": "amfs-system"}})
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ---- observing --------------------------------------------------------------------------------


@dataclass
class Observer:
    prometheus: Prometheus
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)

    def panels(self, phase: str, name: str, expected: dict[str, Check], *,
               every_target_has_data: bool = True, timeout: float = 45.0,
               rate_interval: str | None = None) -> dict[str, Observed]:
        """Wait until every target of dashboard *name* shows what *expected* says (and,
        unless told otherwise, every other target shows something)."""
        all_targets = list(dashboards.targets(name))
        assert {t.key for t in all_targets} >= set(expected), "a check names no target"
        last: dict[str, Observed] = {}
        problems: list[str] = []

        def check() -> bool:
            problems.clear()
            variables, values = dashboards.resolve_variables(
                self.prometheus, name, rate_interval or RATE_INTERVAL[name])
            problems.extend(f"${v} found no values" for v, found in values.items() if not found)
            for target in all_targets:
                last[target.key] = dashboards.evaluate(self.prometheus, target, variables)
                wanted = expected.get(target.key)
                if not last[target.key] and (every_target_has_data or wanted is not None):
                    problems.append(f"{target.key}: no data")
                elif wanted is not None and not wanted(last[target.key]):
                    problems.append(f"{target.key}: {last[target.key]}")
            return not problems

        try:
            wait_for(f"{phase}: {name}", check, timeout, interval=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{phase}: {name}: {exc}; {problems}") from None
        finally:
            self.seen.setdefault(phase, {})[name] = dict(last)
        return last

    def alerts(self, phase: str, firing: dict[str, Callable[[list[dict[str, str]]], bool]],
               timeout: float = 30.0, may_fire: Collection[str] = ()) -> None:
        """Wait until exactly the alerts in *firing* fire, each as its check says, beside
        any of *may_fire* (alerts over a 5m window that an earlier phase set off)."""

        def check() -> bool:
            rules = self.prometheus.rules()
            assert set(rules) == set(ALERTS), sorted(rules)
            assert all(rule["health"] == "ok" for rule in rules.values()), rules
            now = self.prometheus.firing()
            self.seen.setdefault(phase, {})["alerts"] = {
                name: rule["state"] for name, rule in sorted(rules.items())}
            self.seen[phase]["firing"] = now
            return (set(firing) <= set(now) <= set(firing) | set(may_fire)
                    and all(ok(now[name]) for name, ok in firing.items()))

        wait_for(f"{phase}: alerts {sorted(firing)}", check, timeout, interval=0.5)

    def report(self) -> str:
        return json.dumps(self.seen, indent=1, sort_keys=True, default=str)


def pods(*names: str) -> Callable[[list[dict[str, str]]], bool]:
    return lambda alerts: sorted(f"{a['namespace']}/{a['pod']}" for a in alerts) == sorted(names)


def anything(_: list[dict[str, str]]) -> bool:
    return True


def memories(*names: str) -> Callable[[list[dict[str, str]]], bool]:
    return lambda alerts: sorted(a["memory"] for a in alerts) == sorted(names)


def listeners(*pod_listeners: tuple[str, str]) -> Callable[[list[dict[str, str]]], bool]:
    return lambda alerts: sorted((f"{a['namespace']}/{a['pod']}", a["listener"])
                                 for a in alerts) == sorted(pod_listeners)


# ---- the test ---------------------------------------------------------------------------------


def test_every_panel_and_alert_in_health_and_during_an_s3_outage(
    prometheus: Prometheus, operator_process: tuple[Any, int], cluster: Cluster,
    k8s_namespace: str, fault_proxy: FaultProxy, s3_settings: S3Settings, s3_endpoint: str,
    s3_client: Any, tmp_path: Path,
) -> None:
    if not LIBFAKETIME.exists():
        pytest.skip("needs libfaketime for a pod whose clock is wrong: install the Debian "
                    "package 'faketime' (.ci/run does)")
    operator, operator_port = operator_process
    observe = Observer(prometheus)
    socket_dir = short_socket_dir()
    sidecars: list[SidecarProcess] = []
    traffic: Traffic | None = None
    try:
        # -- health ------------------------------------------------------------------------
        # Scraped before the memory exists, so its reconcile shows as a rate.
        prometheus.set_targets(OPERATOR_JOB, {f"127.0.0.1:{operator_port}": {}})
        wait_for("the operator scraped",
                 lambda: prometheus.query(f'up{{job="{OPERATOR_JOB}"}} == 1'))
        cluster.create_secret(k8s_namespace, "creds", {"AWS_ACCESS_KEY_ID": "testing",
                                                       "AWS_SECRET_ACCESS_KEY": "testing"})
        cluster.create_memory(k8s_namespace, MEMORY, {
            "bucket": s3_settings.bucket, "endpointURL": s3_endpoint,
            "credentials": {"secretRef": {"name": "creds"}}})
        cluster.wait_condition(k8s_namespace, MEMORY, "Ready", "True")

        through_proxy = s3_settings.model_copy(update={"endpoint_url": fault_proxy.url,
                                                       "poll_interval": POLL_INTERVAL})
        # Idle connections are not reaped while the trouble phase crowds the sidecar.
        sidecar_a, port_a = start_sidecar(through_proxy, socket_dir, "a", MEMORY,
                                          "--max-connections", str(MAX_CONNECTIONS),
                                          "--header-timeout", "300")
        sidecars.append(sidecar_a)
        target_a = {f"127.0.0.1:{port_a}": {"namespace": "agents", "pod": "agent-0"}}
        prometheus.set_targets(SIDECAR_JOB, target_a)
        traffic = Traffic(SidecarAdapter(sidecar_a.socket_path, timeout=60),
                          S3Adapter.from_settings(s3_settings))
        traffic.start()
        # A watch client that leaves (item 1), then one that stays.
        Stream(sidecar_a.socket_path).close()
        stream = Stream(sidecar_a.socket_path)
        # Two clients resume: one exactly, from the sidecar's buffer; one with no event id.
        Stream(sidecar_a.socket_path, last_event_id=stream.next_id()).close()
        Stream(sidecar_a.socket_path, last_event_id="not-an-event-id").close()

        observe.panels("health", SIDECAR, HEALTHY_SIDECAR)
        observe.panels("health", OVERVIEW, HEALTHY_OVERVIEW)
        observe.alerts("health", {})
        assert "Traceback" not in sidecar_a.log() and " ERROR " not in sidecar_a.log()

        # -- trouble -----------------------------------------------------------------------
        # S3 refuses the sidecar's journal PUTs (as a bucket policy would): its writes are
        # stored and acknowledged, their records held.
        fault_proxy.add(method="PUT", path_contains="/journal/", times=-1, status=403)
        wait_for("a journal record held", lambda: prometheus.query(
            'amfs_sidecar_journal_pending_records{pod="agent-0"} > 0'))
        journal_record_from_the_future(s3_client, s3_settings, traffic.other_pod, 600)
        fast_clock = {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": f"+{CLOCK_AHEAD_SECONDS}s",
                      "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
        sidecar_c, port_c = start_sidecar(
            s3_settings.model_copy(update={"poll_interval": POLL_INTERVAL}), socket_dir, "c",
            MEMORY, env={**fast_clock, "AMFS_MEMORY_LIMIT_BYTES": str(SMALL_MEMORY_LIMIT)})
        sidecars.append(sidecar_c)
        prometheus.set_targets(SIDECAR_JOB, {**target_a, f"127.0.0.1:{port_c}": {
            "namespace": "agents", "pod": "agent-2"}})
        crowd = Crowd(sidecar_a.socket_path, 2 * MAX_CONNECTIONS)
        try:
            observe.panels("trouble", SIDECAR, TROUBLE_SIDECAR, every_target_has_data=False,
                           rate_interval=TROUBLE_RATE_INTERVAL)
            observe.alerts("trouble", {
                "AMFSSidecarJournalPending": pods(A),
                "AMFSSidecarJournalFutureRecords": memories(MEMORY),
                "AMFSSidecarConnectionsRefused": listeners((A, "api")),
                "AMFSSidecarClockOffsetHigh": pods(C),
                "AMFSSidecarMemoryNearLimit": pods(C),
            }, may_fire={"AMFSSidecarS3ErrorRateHigh"})  # the refused PUTs are errors
        finally:
            crowd.close()
        sidecar_c.process.send_signal(signal.SIGKILL)
        sidecar_c.process.wait(10)
        prometheus.set_targets(SIDECAR_JOB, target_a)
        # Over their 5m windows, whatever follows.
        lingering = {"AMFSSidecarJournalFutureRecords", "AMFSSidecarConnectionsRefused"}

        # -- S3 outage ---------------------------------------------------------------------
        # Every S3 connection of the sidecar is reset; a new memory's endpoint is down.
        fault_proxy.add(path_contains="", times=-1, reset=True)
        cluster.create_memory(k8s_namespace, "broken-memory", {
            "bucket": s3_settings.bucket, "endpointURL": f"http://127.0.0.1:{free_port()}",
            "credentials": {"secretRef": {"name": "creds"}}})

        observe.panels("outage", SIDECAR, OUTAGE_SIDECAR)
        observe.panels("outage", OVERVIEW, OUTAGE_OVERVIEW)
        observe.alerts("outage", {
            "AMFSSidecarPollStale": pods(A),
            "AMFSSidecarS3ErrorRateHigh": lambda alerts: [a["memory"] for a in alerts] == [MEMORY],
            "AMFSMemoryNotReady": anything,
            "AMFSSidecarJournalPending": pods(A),
        }, may_fire=lingering)

        # -- a sidecar that never syncs, then the first sidecar killed ------------------------
        dead = s3_settings.model_copy(update={"endpoint_url": f"http://127.0.0.1:{free_port()}",
                                              "poll_interval": POLL_INTERVAL})
        sidecar_b, port_b = start_sidecar(dead, socket_dir, "b", "broken-memory", wait=False)
        sidecars.append(sidecar_b)
        stream.close()
        traffic.close()
        sidecar_a.process.send_signal(signal.SIGKILL)
        sidecar_a.process.wait(10)
        prometheus.set_targets(SIDECAR_JOB, {
            **target_a, f"127.0.0.1:{port_b}": {"namespace": "agents", "pod": "agent-1"}})
        # The one left never synced and serves nobody: its rate panels are empty.
        observe.panels("sidecar killed", SIDECAR, KILLED_SIDECAR, every_target_has_data=False)
        observe.alerts("sidecar killed", {
            "AMFSSidecarDown": pods(A),
            "AMFSSidecarNeverSynced": pods(B),
            "AMFSMemoryNotReady": anything,
            # Still true over its 5m window for A, and true for B's failing attempts.
            "AMFSSidecarS3ErrorRateHigh": anything,
        }, may_fire=lingering)

        # -- every sidecar gone, then the operator ----------------------------------------------
        sidecar_b.process.send_signal(signal.SIGKILL)
        sidecar_b.process.wait(10)
        observe.alerts("all sidecars down", {
            "AMFSSidecarDown": pods(A, B),
            "AMFSSidecarsAbsent": anything,
            "AMFSMemoryNotReady": anything,
            "AMFSSidecarS3ErrorRateHigh": anything,
        }, may_fire=lingering)
        operator.send_signal(signal.SIGKILL)
        operator.wait(10)
        observe.alerts("operator down", {
            "AMFSSidecarDown": pods(A, B),
            "AMFSOperatorAbsent": anything,
            "AMFSSidecarS3ErrorRateHigh": anything,
        }, may_fire=lingering)
    finally:
        if traffic is not None:
            traffic.close()
        for running in sidecars:
            if running.process.poll() is None:
                running.process.kill()
                running.process.wait(10)
        shutil.rmtree(socket_dir, ignore_errors=True)
        report = observe.report()
        (tmp_path / "observations.json").write_text(report)
        if os.environ.get("AMFS_OBSERVATIONS"):
            Path(os.environ["AMFS_OBSERVATIONS"]).write_text(report)
        print(report)


def test_prometheus_listens_on_loopback_only(prometheus: Prometheus) -> None:
    assert prometheus.process is not None
    listening = _listening_ports(prometheus.process.pid)
    assert listening == {("127.0.0.1", prometheus.port)}, listening


def _listening_ports(pid: int) -> set[tuple[str, int]]:
    """TCP sockets in LISTEN state owned by *pid*, from /proc (no ss/netstat needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, family in (("tcp", 4), ("tcp6", 6)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].split(":")
                found.add((_address(address, family), int(port, 16)))
    return found


def _address(hex_address: str, family: int) -> str:
    if family == 4:
        return ".".join(str(int(hex_address[i:i + 2], 16)) for i in (6, 4, 2, 0))
    return "::" if int(hex_address, 16) == 0 else hex_address

