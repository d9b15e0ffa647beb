"""The conditional-write probe's answer, shared by every adapter in the process.

Whether a provider honours ``If-None-Match: *`` is a property of the endpoint
and bucket, not of one ``S3Adapter``: a process that opens twenty adapters on
one bucket asks S3 once. Concurrent first uses wait for the one probe in flight.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

# The probe's one object, per namespace: ``{prefix}{namespace}/_probe/conditional-write.json``.
PROBE_FILE = "conditional-write.json"
PROBE_BODY = b'{"probe": "conditional-write"}'

_answers: dict[tuple[str, str], bool] = {}
_locks: dict[tuple[str, str], threading.Lock] = {}
_guard = threading.Lock()


def _lock_for(name: tuple[str, str]) -> threading.Lock:
    with _guard:
        return _locks.setdefault(name, threading.Lock())


def cached(endpoint: str | None, bucket: str, probe: Callable[[], bool]) -> bool:
    """The answer for (endpoint, bucket), running *probe* only if nobody in this
    process has yet. A probe that raises caches nothing, so the next use retries."""
    name = (endpoint or "aws", bucket)
    answer = _answers.get(name)
    if answer is not None:
        return answer
    with _lock_for(name):
        answer = _answers.get(name)
        if answer is None:
            answer = probe()
            _answers[name] = answer
        return answer


def forget(endpoint: str | None = None, bucket: str | None = None) -> None:
    """Drop cached answers (all of them without arguments), e.g. after a provider
    was upgraded underneath a long-running process."""
    with _guard:
        for name in list(_answers):
            if (endpoint is None or name[0] == (endpoint or "aws")) and (
                bucket is None or name[1] == bucket
            ):
                del _answers[name]
