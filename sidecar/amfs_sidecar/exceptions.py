"""Every error this package raises, in one place.

They subclass the AMFS hierarchy (and ``ValueError`` where the caller's input is
at fault), so code written against the AMFS SDK catches them unchanged.
"""

from __future__ import annotations

from amfs_core.exceptions import AdapterError, AMFSError, VersionConflictError

__all__ = [
    "AdapterError",
    "ConfigError",
    "EntryTooLargeError",
    "InvalidNameError",
    "S3AccessError",
    "SidecarReadOnlyError",
    "SidecarRequestError",
    "SidecarUnavailableError",
    "SocketInUseError",
    "VersionConflictError",
]


class ConfigError(AMFSError, ValueError):
    """The configuration is missing something or has a value that breaks a rule."""


class InvalidNameError(AMFSError, ValueError):
    """An entity path, key, namespace or outcome ref breaks a naming rule.

    ``field`` names the offending argument, ``rule`` states what is allowed.
    """

    def __init__(self, field: str, problem: str, rule: str) -> None:
        self.field = field
        self.rule = rule
        super().__init__(f"{field} {problem} ({rule})")


class EntryTooLargeError(AMFSError, ValueError):
    """A serialised entry is larger than the configured maximum."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"entry is {size} bytes serialised; the maximum is {limit} bytes")


class S3AccessError(AdapterError):
    """S3 refused or failed a request after retries; never means 'not found'."""

    def __init__(self, operation: str, key: str, detail: str) -> None:
        self.operation = operation
        self.key = key
        self.detail = detail
        super().__init__(f"S3 {operation} failed for {key!r}: {detail}")


class SocketInUseError(ConfigError):
    """Another live process serves the socket path, or the path is not a socket."""


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
