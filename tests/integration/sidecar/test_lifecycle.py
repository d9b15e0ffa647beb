"""Socket handling, listeners and graceful shutdown (in-process and as a real process)."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from amfs_sidecar.client import SidecarAdapter
from amfs_sidecar.exceptions import SidecarUnavailableError, SocketInUseError
from tests.fixtures.s3 import all_keys
from tests.fixtures.sidecar import (
    SidecarFactory,
    SidecarProcess,
    sidecar_config,
    spawn_sidecar,
    start_sidecar,
    wait_until,
)

from .sse import EventReader
from .test_api_entries import WRITE, get, post


def test_socket_file_is_0660_and_removed_on_stop(sidecar_factory: SidecarFactory) -> None:
    running = sidecar_factory()
    mode = os.stat(running.socket_path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660
    running.stop()
    assert not running.socket_path.exists()


def test_a_stale_socket_file_is_replaced(sidecar_factory: SidecarFactory,
                                         socket_dir: Path) -> None:
    path = socket_dir / "amfs.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # what a crashed sidecar leaves behind: a socket file nobody serves
    assert path.exists()
    running = sidecar_factory()
    assert running.client().request("GET", "/health").status == 200


def test_refuses_a_socket_held_by_a_live_sidecar(sidecar_factory: SidecarFactory,
                                                 s3_settings: Any) -> None:
    first = sidecar_factory()
    with pytest.raises(SocketInUseError, match="served by another live process"):
        start_sidecar(sidecar_config(s3_settings, first.socket_path))
    # The first one is untouched and still serves.
    assert first.client().request("GET", "/health").status == 200


def test_refuses_to_replace_a_file_that_is_not_a_socket(s3_settings: Any,
                                                        socket_dir: Path) -> None:
    path = socket_dir / "amfs.sock"
    path.write_text("precious")
    with pytest.raises(SocketInUseError, match="is not a socket"):
        start_sidecar(sidecar_config(s3_settings, path))
    assert path.read_text() == "precious"


def test_loopback_tcp_listener_serves_the_same_api(sidecar_factory: SidecarFactory) -> None:
    running = sidecar_factory(listen=("127.0.0.1", 0))
    assert running.sidecar.api_url is not None
    over_tcp = SidecarAdapter(base_url=running.sidecar.api_url)
    over_socket = running.client()
    response = over_tcp.request("POST", "/api/v1/entries", WRITE)
    assert response.status == 201
    read = over_socket.read("checkout-service", "retry-pattern")
    assert read is not None and read.value == {"max": 3}
    over_tcp.close()


async def test_stop_ends_streams_and_refuses_new_clients(sidecar_factory: SidecarFactory
                                                         ) -> None:
    running = sidecar_factory()
    async with running.session() as s, s.get("/api/v1/stream") as response:
        events = EventReader(response)
        await events.comment("connected")
        await asyncio.get_running_loop().run_in_executor(None, running.stop)
        with pytest.raises(EOFError):
            await events.next(timeout=5)
    with pytest.raises(SidecarUnavailableError, match="cannot reach the sidecar"):
        SidecarAdapter(running.socket_path).read("a", "b")


# -- a real process ----------------------------------------------------------------


def test_sigterm_finishes_an_in_flight_write(
    s3_settings: Any, s3_client: Any, fault_proxy: Any, socket_dir: Path,
    sidecar_processes: list[SidecarProcess],
) -> None:
    settings = s3_settings.model_copy(update={"endpoint_url": fault_proxy.url})
    proc = spawn_sidecar(settings, socket_dir / "amfs.sock", "--drain-seconds", "20")
    sidecar_processes.append(proc)
    # Hold the version PUT in S3 for a while so SIGTERM lands mid-write.
    fault_proxy.add(method="PUT", path_contains="/entries/", stall=1.5)
    result: dict[str, Any] = {}

    def write() -> None:
        client = SidecarAdapter(proc.socket_path)
        response = client.request("POST", "/api/v1/entries", WRITE)
        result["status"], result["body"] = response.status, response.json()
        client.close()

    writer = threading.Thread(target=write)
    writer.start()
    wait_until(lambda: any(m == "PUT" and "/entries/" in p for m, p in fault_proxy.requests),
               message="the write reaching S3")
    assert proc.process.poll() is None
    code = proc.terminate()
    writer.join(10)

    assert code == 0, proc.log()
    assert result["status"] == 201, result
    assert result["body"]["version"] == 1
    keys = all_keys(s3_client, s3_settings.bucket, "amfs/default/entries/")
    assert keys == ["amfs/default/entries/checkout-service/retry-pattern/v1.json"]
    assert not proc.socket_path.exists()
    log = proc.log()
    assert "stopping: draining in-flight requests" in log and "stopped" in log
    assert "testing" not in log  # the credentials never reach the log


def test_a_second_process_on_the_same_socket_exits_with_an_error(
    s3_settings: Any, socket_dir: Path, sidecar_processes: list[SidecarProcess]
) -> None:
    first = spawn_sidecar(s3_settings, socket_dir / "amfs.sock")
    sidecar_processes.append(first)
    second = spawn_sidecar(s3_settings, first.socket_path, wait=False)
    sidecar_processes.append(second)
    assert second.process.wait(30) == 2
    assert "refusing to start" in second.log()
    assert first.ready()


async def test_read_after_restart_comes_from_the_first_sync(
    sidecar_factory: SidecarFactory,
) -> None:
    first = sidecar_factory("first")
    async with first.session() as s:
        await post(s, "/api/v1/entries", WRITE)
    first.stop()
    second = sidecar_factory("second")
    async with second.session() as s:
        status, entry = await get(s, "/api/v1/entries/checkout-service/retry-pattern")
    assert (status, entry["version"]) == (200, 1)


def test_draining_sidecar_reports_unready_and_still_answers_in_flight_requests(
    sidecar_factory: SidecarFactory, s3_settings: Any, fault_proxy: Any
) -> None:
    import urllib.error
    import urllib.request

    settings = s3_settings.model_copy(update={"endpoint_url": fault_proxy.url})
    running = sidecar_factory(settings=settings)
    fault_proxy.add(method="PUT", path_contains="/entries/", stall=1.5)
    result: dict[str, Any] = {}

    def write() -> None:
        response = SidecarAdapter(running.socket_path).request("POST", "/api/v1/entries", WRITE)
        result["status"] = response.status

    writer = threading.Thread(target=write)
    writer.start()
    wait_until(lambda: any(m == "PUT" and "/entries/" in p for m, p in fault_proxy.requests),
               message="the write reaching S3")
    stopper = threading.Thread(target=running.stop)
    stopper.start()

    def unready() -> bool:
        try:
            urllib.request.urlopen(running.metrics_url + "/ready", timeout=2)
        except urllib.error.HTTPError as exc:
            return exc.code == 503
        return False

    wait_until(unready, message="/ready turning 503 while draining")
    writer.join(10)
    stopper.join(30)
    assert result["status"] == 201
