"""Every error the sidecar and its client raise, in one place.

The adapter's own errors (names, configuration, S3 access) live in
:mod:`amfs_s3.exceptions`; these subclass the same AMFS hierarchy.
"""

from __future__ import annotations

from amfs_core.exceptions import AdapterError, AMFSError

from amfs_s3.exceptions import ConfigError

__all__ = [
    "EntryTooLargeError",
    "InsecureSocketDirError",
    "SidecarReadOnlyError",
    "SidecarRequestError",
    "SidecarUnavailableError",
    "SocketInUseError",
]




class EntryTooLargeError(AMFSError, ValueError):
    """A serialised entry is larger than the configured maximum."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"entry is {size} bytes serialised; the maximum is {limit} bytes")



class SocketInUseError(ConfigError):
    """Another live process serves the socket path, or the path is not a socket."""


class InsecureSocketDirError(ConfigError):
    """The socket's directory (or a symlink on the way to it) lets others replace the socket."""


class SidecarUnavailableError(AdapterError):
    """The sidecar cannot be reached, or it could not reach S3 (503)."""


class SidecarRequestError(AMFSError, ValueError):
    """The sidecar refused the request as malformed (400/422)."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"sidecar refused the request (HTTP {status}): {detail}")


class SidecarReadOnlyError(AMFSError, PermissionError):
    """The sidecar runs with --read-only (403)."""
