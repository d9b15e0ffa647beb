"""Re-reading a mounted credentials directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from amfs_sidecar.credentials import CredentialsWatcher


def write(directory: Path, key: str | None, secret: str | None) -> None:
    for name, value in (("AWS_ACCESS_KEY_ID", key), ("AWS_SECRET_ACCESS_KEY", secret)):
        path = directory / name
        if value is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(value + "\n")


async def test_applies_only_complete_changes(tmp_path: Path) -> None:
    write(tmp_path, "AKIA1", "s1")
    applied: list[tuple[str | None, str | None]] = []

    async def apply(key: str | None, secret: str | None) -> None:
        applied.append((key, secret))

    watcher = CredentialsWatcher(tmp_path, apply)
    assert await watcher.check() is False  # unchanged since start
    write(tmp_path, "AKIA2", "s2")
    assert await watcher.check() is True
    assert applied == [("AKIA2", "s2")]  # file contents, stripped of the newline
    write(tmp_path, None, "s3")  # half-way through a rotation: wait for both files
    assert await watcher.check() is False
    write(tmp_path, None, None)  # both gone: back to the ambient credential chain
    assert await watcher.check() is True
    assert applied[-1] == (None, None)
    assert watcher.rotations == 2


async def test_a_failed_apply_is_retried_next_time(tmp_path: Path) -> None:
    write(tmp_path, "AKIA1", "s1")
    calls = []

    async def flaky(key: str | None, secret: str | None) -> None:
        calls.append(key)
        if len(calls) == 1:
            raise RuntimeError("S3 client could not be built")

    watcher = CredentialsWatcher(tmp_path, flaky)
    write(tmp_path, "AKIA2", "s2")
    with pytest.raises(RuntimeError):
        await watcher.check()
    assert await watcher.check() is True
    assert calls == ["AKIA2", "AKIA2"]
