"""What ``make run`` does: ``amfs-sidecar --embedded-s3`` on ./.run/amfs.sock, the three
printed commands work when pasted, Ctrl-C stops everything cleanly, and the memory
(SeaweedFS under ./.run/seaweedfs) is there again after a restart."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from amfs_core.models import MemoryEntry, Provenance

from amfs_sidecar.client import SidecarAdapter
from tests.fixtures.sidecar import REPO, wait_until


@dataclass
class MakeRun:
    """``python -m amfs_sidecar --embedded-s3`` as ``make run`` starts it, its output
    collected line by line."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, cwd: Path, *flags: str) -> MakeRun:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AMFS_", "AWS_"))}  # a fresh machine: no config at all
        env["PYTHONPATH"] = str(REPO / "sidecar")
        process = subprocess.Popen(
            [sys.executable, "-m", "amfs_sidecar", *(flags or ("--embedded-s3",)),
             "--metrics-port", "0"],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        run = cls(process)
        threading.Thread(target=run._collect, daemon=True).start()
        return run

    def _collect(self) -> None:
        assert self.process.stdout is not None
        self.lines.extend(iter(self.process.stdout.readline, ""))

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_started(self) -> None:
        wait_until(lambda: any("--unix-socket" in line and "stream" in line
                               for line in self.lines) or self.process.poll() is not None,
                   60, message="the printed commands")
        assert self.process.poll() is None, self.output

    def ctrl_c(self) -> None:
        self.process.send_signal(signal.SIGINT)
        assert self.process.wait(30) == 0
        # The collector ends at EOF, after the last line.
        wait_until(lambda: "Embedded S3 stopped" in self.output, message="the closing line")

    def kill(self) -> None:
        """After a failure: SIGTERM lets the sidecar stop its SeaweedFS (which runs in a
        session of its own, out of reach of a kill of the sidecar); SIGKILL if it hangs."""
        if self.process.poll() is None:
            children = child_pids(self.process.pid)
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
                for pid in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


def child_pids(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            children += [int(child) for child in task.read_text().split()]
    return children


def test_embedded_run_prints_working_commands_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed; the printed commands are curl commands")
    run = MakeRun.start(tmp_path)
    lines = run.lines
    try:
        run.wait_started()
        output = run.output
        assert "Starting an embedded S3 server (SeaweedFS, data in " in output
        assert "bucket 'amfs-local' created" in output
        data = tmp_path.resolve() / ".run" / "seaweedfs"
        assert f"rm -rf {data}" in output
        assert "Sidecar API on unix socket .run/amfs.sock" in output
        write_cmd, read_cmd, stream_cmd = [
            line.strip() for line in lines if line.strip().startswith("curl ")]
        assert (tmp_path / ".run" / "amfs.sock").exists()
        wait_until(lambda: subprocess.run(
            ["curl", "-sf", "--unix-socket", ".run/amfs.sock", "http://localhost/ready"],
            cwd=tmp_path, capture_output=True).returncode == 0, message="ready")

        stream = subprocess.Popen(stream_cmd, shell=True, cwd=tmp_path, stdout=subprocess.PIPE,
                                  text=True)
        assert stream.stdout is not None
        assert stream.stdout.readline().startswith("retry:")
        written = json.loads(subprocess.run(write_cmd, shell=True, cwd=tmp_path, check=True,
                                            capture_output=True, text=True).stdout)
        assert written["value"] == {"max_retries": 3} and written["version"] == 1
        read = json.loads(subprocess.run(read_cmd, shell=True, cwd=tmp_path, check=True,
                                         capture_output=True, text=True).stdout)
        assert read == written
        event_lines = [stream.stdout.readline() for _ in range(5)]
        assert "event: write\n" in event_lines
        assert any(line.startswith("data: ") and json.loads(line[6:]) == written
                   for line in event_lines)
        stream.terminate()
        stream.wait(5)

        run.ctrl_c()
        assert f"Embedded S3 stopped; its data stays in {data}." in run.output
        assert not (tmp_path / ".run" / "amfs.sock").exists()
    finally:
        run.kill()


def test_the_memory_survives_a_restart_and_moto_forgets_it(tmp_path: Path) -> None:
    """The main job twice: write, stop, start, read; then the same on moto, which forgets."""
    socket_path = tmp_path / ".run" / "amfs.sock"
    entry = MemoryEntry(entity_path="demo/checkout", key="retry-pattern", value={"max_retries": 3},
                        provenance=Provenance(agent_id="me", session_id="s",
                                              written_at=datetime.now(UTC)))
    for provider, flag in (("seaweedfs", "--embedded-s3"), ("moto", "--embedded-s3=moto")):
        for attempt in ("write", "read"):
            run = MakeRun.start(tmp_path, flag)
            try:
                run.wait_started()
                client = SidecarAdapter(socket_path)
                wait_until(lambda c=client: c.request("GET", "/ready").status == 200,
                           message="ready")
                if attempt == "write":
                    assert client.write(entry).version == 1
                else:
                    stored = client.read("demo/checkout", "retry-pattern")
                    if provider == "seaweedfs":
                        assert "bucket 'amfs-local' kept from the last run" in run.output
                        assert stored is not None and stored.value == {"max_retries": 3}
                    else:
                        assert "in memory" in run.output and stored is None
                client.close()
                run.ctrl_c()
            finally:
                run.kill()
