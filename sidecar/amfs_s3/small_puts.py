"""Small PUTs go out whole, without ``Expect: 100-continue``.

botocore asks every PutObject to wait for the server's ``100 Continue`` before
it sends the body. That pays off for a large upload the server may refuse; an
entry is a few KB of JSON, and the wait is one more exchange on every write,
and on a refused conditional PUT (the 412 of an existing key) the body is sent
anyway after the answer. Against moto a refused PUT took a median 13.8 ms with
the header; without it the cold update's PUTs, refused ones included, took 2.8 ms
(calls timed around boto3 on this project's 2-CPU machine, not a bench/ figure).
"""

from __future__ import annotations

from typing import Any

# Bodies at or above this keep the header: a refused PUT then saves the upload.
EXPECT_CONTINUE_FROM_BYTES = 1024 * 1024


def body_length(body: Any) -> int | None:
    if isinstance(body, bytes | bytearray):
        return len(body)
    if hasattr(body, "seek") and hasattr(body, "tell"):
        position = body.tell()
        body.seek(0, 2)
        end = body.tell()
        body.seek(position)
        return int(end - position)
    return None


def drop_expect_for_small_bodies(request: Any = None, **_: Any) -> None:
    headers = getattr(request, "headers", None)
    if headers is None or "Expect" not in headers:
        return
    length = body_length(getattr(request, "body", None))
    if length is not None and length < EXPECT_CONTINUE_FROM_BYTES:
        del headers["Expect"]


def install(events: Any) -> None:
    """Register on a client's ``meta.events`` (before signing: Expect is not signed,
    but nothing is changed after the signature)."""
    events.register("before-sign.s3.PutObject", drop_expect_for_small_bodies)
