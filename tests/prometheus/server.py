"""A real Prometheus for tests: loopback only, tmp storage, short intervals, HTTP API client.

Prometheus scrapes only the targets written to its file_sd files and evaluates only the
rule file it is given; it has no remote write, no other listener and no discovery that
could reach beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.fixtures.s3 import free_port

T = TypeVar("T")
Sample = tuple[dict[str, str], float]


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 30.0,
             interval: float = 0.25) -> T:
    """*check()*'s first truthy result; fail after *timeout* naming *what* and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


@dataclass
class Prometheus:
    binary: str
    workdir: Path
    rule_file: Path
    jobs: Mapping[str, Mapping[str, str]]  # job name -> labels every target of it gets
    scrape_interval: str = "1s"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _targets_file(self, job: str) -> Path:
        return self.workdir / "targets" / f"{job.replace('/', '_')}.json"

    def set_targets(self, job: str, targets: Mapping[str, Mapping[str, str]]) -> None:
        """Replace *job*'s targets ({"127.0.0.1:PORT": {labels}}); Prometheus re-reads the file."""
        groups = [{"targets": [address], "labels": {**self.jobs[job], **labels}}
                  for address, labels in targets.items()]
        path = self._targets_file(job)
        scratch = path.with_suffix(".tmp")
        scratch.write_text(json.dumps(groups))
        os.replace(scratch, path)  # never a half-written file for Prometheus to read

    def start(self) -> None:
        (self.workdir / "targets").mkdir(parents=True, exist_ok=True)
        for job in self.jobs:
            self.set_targets(job, {})
        config = {
            "global": {"scrape_interval": self.scrape_interval,
                       "scrape_timeout": self.scrape_interval,
                       "evaluation_interval": self.scrape_interval},
            "rule_files": [str(self.rule_file)],
            "scrape_configs": [
                {"job_name": job,
                 "file_sd_configs": [{"files": [str(self._targets_file(job))],
                                      "refresh_interval": "1s"}]}
                for job in self.jobs
            ],
        }
        config_file = self.workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        log = (self.workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [self.binary, f"--config.file={config_file}",
             f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
        )
        log.close()
        wait_for("Prometheus to be ready", lambda: self._ready() or self._exited())
        assert self.process.poll() is None, self.log()

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False

    def _exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def log(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    # -- the HTTP API ---------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}",
                                        timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{path} {params}: {exc.code} {exc.read().decode()}") from None
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[Sample]:
        """An instant query: (labels, value) per series; a scalar is one unlabelled sample."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(dict(item["metric"]), float(item["value"][1])) for item in data["result"]]

    def label_values(self, label: str, match: str) -> list[str]:
        return list(self.api(f"label/{label}/values", **{"match[]": match}))

    def rules(self) -> dict[str, dict[str, Any]]:
        """Every alerting rule by name, with its state, health and active alerts."""
        found: dict[str, dict[str, Any]] = {}
        for group in self.api("rules", type="alert")["groups"]:
            for rule in group["rules"]:
                found[rule["name"]] = rule
        return found

    def firing(self) -> dict[str, list[dict[str, str]]]:
        """The labels of each firing alert, by alert name."""
        alerts: dict[str, list[dict[str, str]]] = {}
        for alert in self.api("alerts")["alerts"]:
            if alert["state"] == "firing":
                alerts.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
        return alerts


def finite(samples: list[Sample]) -> list[Sample]:
    return [(labels, value) for labels, value in samples if math.isfinite(value)]
