"""Every error this package raises, in one place."""

from __future__ import annotations


class OperatorError(Exception):
    """Base of the operator's own errors."""


class SpecError(OperatorError, ValueError):
    """An AMFSMemory spec breaks a rule; the message names the field and the rule."""


class KubeError(OperatorError):
    """The Kubernetes API refused or failed a request (anything but 404 on a read)."""

    def __init__(self, method: str, path: str, status: int, detail: str) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.detail = detail
        super().__init__(f"Kubernetes API {method} {path} failed with {status}: {detail}")

    @property
    def transient(self) -> bool:
        """Unreachable (0), throttled or a server error: worth trying again shortly."""
        return self.status == 0 or self.status == 429 or self.status >= 500


class S3ProbeError(OperatorError):
    """S3 answered a probe or a deletion with an error; ``reason`` is a condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"{reason}: {message}")


class Refused(OperatorError):
    """The memory cannot be reconciled until someone changes something; ``reason`` is a
    condition reason (``PrefixConflict``, ``ImmutableFieldChanged``, ``NameTaken``)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"{reason}: {message}")


class InjectionError(OperatorError, ValueError):
    """The pod asks for something that cannot be injected; the message names the
    annotation or field and the rule, and the pod is refused."""


class WebhookConfigError(OperatorError, ValueError):
    """The webhook server cannot start as configured; the message says what to fix."""
