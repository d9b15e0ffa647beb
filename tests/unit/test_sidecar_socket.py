"""Binding the API socket: mode, stale files, live owners."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from amfs_sidecar.exceptions import SocketInUseError
from amfs_sidecar.server import bind_unix_socket
from tests.fixtures.sidecar import short_socket_dir


@pytest.fixture
def path() -> Iterator[Path]:
    directory = short_socket_dir()
    yield directory / "nested" / "amfs.sock"
    for p in sorted(directory.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    directory.rmdir()


def test_binds_with_mode_0660_creating_the_directory(path: Path) -> None:
    sock = bind_unix_socket(path)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        assert [p.name for p in path.parent.iterdir()] == ["amfs.sock"]  # no temp left behind
    finally:
        sock.close()


def test_replaces_a_stale_socket_but_not_a_live_one(path: Path) -> None:
    path.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    first = bind_unix_socket(path)
    first.listen()
    try:
        with pytest.raises(SocketInUseError, match="another live process"):
            bind_unix_socket(path)
    finally:
        first.close()
