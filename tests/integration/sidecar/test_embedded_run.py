"""What ``make run`` does: ``amfs-sidecar --embedded-s3`` on ./.run/amfs.sock, the three
printed commands work when pasted, and Ctrl-C stops everything cleanly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.fixtures.sidecar import REPO, wait_until


def test_embedded_run_prints_working_commands_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed; the printed commands are curl commands")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AMFS_", "AWS_"))}  # a fresh machine: no config at all
    env["PYTHONPATH"] = str(REPO / "sidecar")
    process = subprocess.Popen(
        [sys.executable, "-m", "amfs_sidecar", "--embedded-s3", "--metrics-port", "0"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []

    def collect() -> None:
        assert process.stdout is not None
        lines.extend(iter(process.stdout.readline, ""))

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("--unix-socket" in line and "stream" in line for line in lines),
                   30, message="the printed commands")
        output = "".join(lines)
        assert "Starting an embedded S3 server" in output
        assert "bucket 'amfs-local' created" in output
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

        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
        reader.join(5)
        assert "Embedded S3 stopped" in "".join(lines)
        assert not (tmp_path / ".run" / "amfs.sock").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
