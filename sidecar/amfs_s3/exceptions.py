"""Every error the S3 adapter raises, in one place.

They subclass the AMFS hierarchy (and ``ValueError`` where the caller's input is
at fault), so code written against the AMFS SDK catches them unchanged.
"""

from __future__ import annotations

from amfs_core.exceptions import AdapterError, AMFSError, VersionConflictError

__all__ = [
    "AdapterError",
    "ConfigError",
    "InvalidNameError",
    "S3AccessError",
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


class S3AccessError(AdapterError):
    """S3 refused or failed a request after retries; never means 'not found'."""

    def __init__(self, operation: str, key: str, detail: str) -> None:
        self.operation = operation
        self.key = key
        self.detail = detail
        super().__init__(f"S3 {operation} failed for {key!r}: {detail}")
