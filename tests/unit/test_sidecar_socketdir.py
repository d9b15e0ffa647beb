"""The socket's directory: world-writable without sticky, or behind a bad symlink, is refused."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from amfs_sidecar.exceptions import InsecureSocketDirError
from amfs_sidecar.server import bind_unix_socket
from amfs_sidecar.socketdir import check_socket_dir, socket_dir_problem
from tests.fixtures.sidecar import short_socket_dir


@pytest.fixture
def base() -> Iterator[Path]:
    directory = short_socket_dir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_a_private_directory_is_accepted(base: Path) -> None:
    (base / "run").mkdir(mode=0o750)
    assert socket_dir_problem(base / "run") is None


def test_world_writable_with_sticky_bit_is_accepted(base: Path) -> None:
    shared = base / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    assert socket_dir_problem(shared) is None


def test_world_writable_without_sticky_bit_is_refused(base: Path) -> None:
    shared = base / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(InsecureSocketDirError) as caught:
        check_socket_dir(shared)
    message = str(caught.value)
    assert f"socket directory {shared} is world-writable (mode 777) without the sticky bit" \
        in message
    assert "--allow-insecure-socket-dir" in message
    check_socket_dir(shared, allow_insecure=True)  # the flag says so


def test_a_world_writable_ancestor_is_refused_too(base: Path) -> None:
    (base / "open").mkdir()
    (base / "open").chmod(0o777)
    (base / "open" / "amfs").mkdir(mode=0o700)
    problem = socket_dir_problem(base / "open" / "amfs")
    assert problem is not None and f"directory {base / 'open'} is world-writable" in problem


@pytest.mark.skipif(os.geteuid() != 0, reason="making a symlink another user owns needs root")
def test_a_symlinked_parent_another_user_owns_is_refused(base: Path) -> None:
    # Another user's symlink in a sticky shared directory, as one could plant in /tmp.
    (base / "shared").mkdir()
    (base / "shared").chmod(0o1777)
    (base / "target" / "amfs").mkdir(parents=True)
    (base / "shared" / "run").symlink_to(base / "target")
    os.lchown(base / "shared" / "run", 12345, 12345)
    problem = socket_dir_problem(base / "shared" / "run" / "amfs")
    assert problem is not None
    assert f"reached through symlink {base / 'shared' / 'run'} owned by uid 12345" in problem
    # The socket's own directory as such a symlink: the same rule.
    assert socket_dir_problem(base / "shared" / "run") is not None


def test_a_trusted_symlinked_parent_is_followed(base: Path) -> None:
    # Like /var/run -> /run: owned by this user, in a directory only it writes.
    (base / "target" / "amfs").mkdir(parents=True)
    (base / "run").symlink_to(base / "target")
    assert socket_dir_problem(base / "run" / "amfs") is None


def test_bind_refuses_before_creating_the_socket(base: Path) -> None:
    shared = base / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(InsecureSocketDirError):
        bind_unix_socket(shared / "amfs.sock")
    assert list(shared.iterdir()) == []
    sock = bind_unix_socket(shared / "amfs.sock", allow_insecure_dir=True)
    try:
        assert sock.family == socket.AF_UNIX and (shared / "amfs.sock").exists()
    finally:
        sock.close()


def test_the_default_run_directory_passes_on_this_machine() -> None:
    # /var/run is a root-owned symlink to /run on most systems: it must not trip the rule.
    if os.path.isdir("/var/run"):
        assert socket_dir_problem(Path("/var/run")) is None


def test_a_trusted_symlink_to_an_open_directory_is_refused(base: Path) -> None:
    (base / "open").mkdir()
    (base / "open").chmod(0o777)
    (base / "run").symlink_to(base / "open")
    problem = socket_dir_problem(base / "run")
    assert problem is not None and f"{base / 'open'} is world-writable" in problem
