"""The upstream ``amfs`` CLI (amfs-cli from PyPI, unmodified) against the sidecar:
``AMFS_HTTP_URL`` is all it is given, as in an injected pod."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.sidecar import RunningSidecar, wait_until

from .conftest import SIDECAR_AGENT_ID

AMFS = str(Path(sys.executable).with_name("amfs"))
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def cli_env(http_url: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMFS_")}
    # A fresh HOME: no stored credentials, no amfs.yaml; only the URL the injector sets.
    env.update(AMFS_HTTP_URL=http_url, HOME=str(tmp_path), COLUMNS="200", NO_COLOR="1")
    return env


def amfs(env: dict[str, str], *args: str, cwd: Path | None = None) -> str:
    done = subprocess.run([AMFS, *args], env=env, cwd=cwd or env["HOME"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_status_reports_a_healthy_connection(cli_env: dict[str, str], http_url: str) -> None:
    out = amfs(cli_env, "status")
    assert "Remote (HTTP API)" in out and http_url in out
    assert "Healthy" in out


def test_write_then_recall(cli_env: dict[str, str], live_sidecar: RunningSidecar) -> None:
    out = amfs(cli_env, "write", "myapp/auth", "token-ttl", '{"minutes": 15}')
    assert "Written myapp/auth/token-ttl v1" in out
    assert "Written myapp/auth/token-ttl v2" in amfs(cli_env, "write", "myapp/auth",
                                                      "token-ttl", '{"minutes": 20}')
    recalled = json.loads(amfs(cli_env, "recall", "myapp/auth", "token-ttl", "--format", "json"))
    assert (recalled["version"], recalled["value"]) == (2, {"minutes": 20})
    # The CLI names no agent: the sidecar's own id is recorded.
    assert recalled["provenance"]["agent_id"] == SIDECAR_AGENT_ID
    panel = amfs(cli_env, "recall", "myapp/auth", "token-ttl")
    assert "myapp/auth/token-ttl" in panel and "v2" in panel and '"minutes": 20' in panel


def test_search_prints_a_table(cli_env: dict[str, str]) -> None:
    amfs(cli_env, "write", "svc/api", "retry-pattern", '"retry three times"')
    amfs(cli_env, "write", "svc/db", "pool-size", '"ten"')
    table = amfs(cli_env, "search", "retry")
    assert "Search Results (1 entries)" in table
    assert "svc/api" in table and "retry-pattern" in table and "retry three times" in table
    assert "pool-size" not in table
    assert "No results found." in amfs(cli_env, "search", "nothing-like-this")


def test_stats(cli_env: dict[str, str]) -> None:
    amfs(cli_env, "write", "svc/a", "k1", "1")
    amfs(cli_env, "write", "svc/b", "k1", "2")
    stats = json.loads(amfs(cli_env, "stats", "--format", "json"))
    assert (stats["total_entries"], stats["total_entities"], stats["total_agents"]) == (2, 2, 1)
    panel = amfs(cli_env, "stats")
    assert re.search(r"Total Entries\s+2", panel) and re.search(r"Total Entities\s+2", panel)


class _Output(threading.Thread):
    """Everything a process writes to stdout, collected as it arrives."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        super().__init__(daemon=True)
        self.process = process
        self.text = ""

    def run(self) -> None:
        assert self.process.stdout is not None
        for chunk in iter(lambda: self.process.stdout.read1(4096), b""):  # type: ignore[union-attr]
            self.text += _ANSI.sub("", chunk.decode(errors="replace"))


@pytest.fixture
def watching(cli_env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], _Output]]:
    # FORCE_COLOR makes rich treat the pipe as a terminal, so the live table is redrawn
    # as events arrive instead of only at exit.
    env = {**cli_env, "FORCE_COLOR": "1"}
    env.pop("NO_COLOR")
    process = subprocess.Popen([AMFS, "watch", "team"], env=env, cwd=env["HOME"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = _Output(process)
    output.start()
    try:
        yield process, output
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def test_watch_receives_another_clients_write(
    watching: tuple[subprocess.Popen[bytes], _Output], live_sidecar: RunningSidecar
) -> None:
    process, output = watching
    wait_until(lambda: live_sidecar.client().sidecar_stats()["watchers"] == 1, 30,
               message="amfs watch subscribed")
    writer = live_sidecar.client()  # another client: SidecarAdapter over the Unix socket
    from amfs import AgentMemory

    AgentMemory(agent_id="writer-b", adapter=writer).write("team/api", "deploy-window",
                                                           "tuesdays")
    AgentMemory(agent_id="writer-b", adapter=writer).write("elsewhere", "ignored", "x")
    wait_until(lambda: "deploy-window" in output.text, 30, message="the event on screen")
    process.send_signal(signal.SIGINT)
    process.wait(30)
    output.join(10)
    assert "team/api" in output.text and "tuesdays" in output.text
    assert "Received 1 events." in output.text
    assert "ignored" not in output.text
