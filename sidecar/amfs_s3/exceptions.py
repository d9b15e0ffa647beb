"""Every error the S3 adapter raises, in one place.

They subclass the AMFS hierarchy (and ``ValueError`` where the caller's input is
at fault), so code written against the AMFS SDK catches them unchanged.
"""

from __future__ import annotations

from amfs_core.exceptions import AdapterError, AMFSError, VersionConflictError

__all__ = [
    "AdapterError",
    "ConfigError",
    "IdempotencyKeyReusedError",
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


class IdempotencyKeyReusedError(AMFSError, ValueError):
    """A write carried an idempotency key an earlier, different write of the entry used."""

    def __init__(self, entity_path: str, key: str, idempotency_key: str, version: int) -> None:
        self.entity_path = entity_path
        self.key = key
        self.idempotency_key = idempotency_key
        self.version = version
        super().__init__(
            f"Idempotency-Key {idempotency_key!r} was used for a different write of "
            f"{entity_path}/{key} (version {version}); use a new key for a new write"
        )
