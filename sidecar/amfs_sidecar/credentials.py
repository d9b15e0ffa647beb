"""Credentials from a mounted Secret directory, re-read when the files change.

Kubernetes updates a Secret volume by swapping a symlink (``..data``), so the
watcher compares the files' contents (as a digest, never logged) on a short
interval instead of relying on inotify events that symlink swaps do not give.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from pydantic import SecretStr

from amfs_s3.config import read_credentials_dir
from amfs_sidecar.logs import fields

logger = logging.getLogger(__name__)

DEFAULT_CHECK_SECONDS = 5.0

Apply = Callable[[str | None, str | None], Awaitable[None]]


def _secret(values: dict[str, SecretStr], name: str) -> str | None:
    value = values.get(name)
    return value.get_secret_value() if value is not None else None


def read_pair(directory: Path) -> tuple[str | None, str | None]:
    """(access key id, secret access key) from *directory*; None where a file is absent."""
    values = read_credentials_dir(directory)
    return _secret(values, "aws_access_key_id"), _secret(values, "aws_secret_access_key")


def digest(pair: tuple[str | None, str | None]) -> str:
    return hashlib.sha256(repr(pair).encode()).hexdigest()


class CredentialsWatcher:
    """Calls *apply* with the new pair whenever the directory's credentials change."""

    def __init__(self, directory: Path, apply: Apply, *,
                 interval: float = DEFAULT_CHECK_SECONDS) -> None:
        self.directory = directory
        self.apply = apply
        self.interval = interval
        self.rotations = 0
        self._digest = digest(read_pair(directory))
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="amfs-credentials")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def check(self) -> bool:
        """Re-read the files; apply and return True if they changed."""
        try:
            pair = read_pair(self.directory)
        except OSError as exc:
            logger.warning("credentials directory unreadable; keeping current credentials",
                           extra=fields(directory=str(self.directory), error=exc.strerror))
            return False
        new_digest = digest(pair)
        if new_digest == self._digest:
            return False
        if (pair[0] is None) != (pair[1] is None):
            # Half a rotation (one file written, the other not yet): wait for both.
            logger.warning("credentials directory has only one of the two keys; waiting",
                           extra=fields(directory=str(self.directory)))
            return False
        await self.apply(*pair)
        self._digest = new_digest
        self.rotations += 1
        logger.info("credentials rotated", extra=fields(directory=str(self.directory),
                                                        rotations=self.rotations))
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception as exc:
                logger.warning("credentials reload failed; keeping current credentials",
                               extra=fields(error=type(exc).__name__))
