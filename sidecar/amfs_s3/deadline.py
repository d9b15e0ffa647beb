"""A total deadline for each S3 operation, retries included.

botocore bounds one attempt (``connect_timeout``, ``read_timeout``) and counts
attempts, but not the time they add up to: against a hung endpoint five
attempts of a 30 s read timeout kept a sidecar "ready" for a minute. Here a
retry is started only if a whole attempt (connect + read timeout) still fits
before the operation's deadline, so no operation outlives it, and fast
failures (a 503 SlowDown, a reset) keep their retries.
"""

from __future__ import annotations

import time
from typing import Any

from botocore.exceptions import BotoCoreError

_STARTED = "amfs_deadline_started"
_ATTEMPTS = "amfs_deadline_attempts"
_OPERATION = "amfs_deadline_operation"
_LAST = "amfs_deadline_last_error"


class OperationDeadlineExceeded(BotoCoreError):
    fmt = ("S3 {operation} gave up after {elapsed:.1f} s and {attempts} attempt(s) (last: "
           "{last}): another attempt (connect_timeout {connect_timeout:g} s + read_timeout "
           "{read_timeout:g} s) would end past operation_deadline {deadline:g} s")


class Deadline:
    """botocore event handlers that enforce *deadline* seconds per operation."""

    def __init__(self, deadline: float, connect_timeout: float, read_timeout: float) -> None:
        self.deadline = deadline
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout

    def install(self, events: Any) -> None:
        """Register on a client's ``meta.events``."""
        events.register("before-call.s3", self.started)
        events.register("needs-retry.s3", self.failed)
        events.register("before-send.s3", self.check)

    def started(self, context: dict[str, Any] | None = None, model: Any = None,
                **_: Any) -> None:
        if context is not None:
            context[_STARTED] = time.monotonic()
            context[_ATTEMPTS] = 0
            context[_OPERATION] = getattr(model, "name", "request")

    def failed(self, request_dict: dict[str, Any] | None = None, caught_exception: Any = None,
               response: Any = None, **_: Any) -> None:
        """After each attempt: remember what went wrong, for the give-up message."""
        context = (request_dict or {}).get("context")
        if not isinstance(context, dict):
            return
        if caught_exception is not None:
            context[_LAST] = str(caught_exception)
        elif response is not None and response[0].status_code >= 400:
            context[_LAST] = f"HTTP {response[0].status_code}"

    def check(self, request: Any = None, **_: Any) -> None:
        """Before each attempt: raise (not retried by botocore) if it could end too late."""
        context = getattr(request, "context", None)
        if not isinstance(context, dict) or _STARTED not in context:
            return
        context[_ATTEMPTS] += 1
        if context[_ATTEMPTS] == 1:
            return  # the first attempt always goes: the config checks it fits
        elapsed = time.monotonic() - context[_STARTED]
        if elapsed + self.connect_timeout + self.read_timeout > self.deadline:
            raise OperationDeadlineExceeded(
                operation=context.get(_OPERATION, "request"), elapsed=elapsed,
                attempts=context[_ATTEMPTS] - 1, connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout, deadline=self.deadline,
                last=context.get(_LAST, "unknown"),
            )
