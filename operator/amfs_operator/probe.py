"""The bucket probe: can this memory's credentials reach its bucket, and does the
provider honour conditional writes?

Clients are cached per (endpoint, region, credentials): building a botocore client
costs tens of milliseconds, and a timer re-probes every memory. A target without keys
would be signed with the operator's own identity (boto3's chain in the operator's
pod); the cache refuses to build such a client unless the operator was started with
``--allow-operator-identity``, so no memory borrows it by mistake. Errors become
:class:`S3ProbeError` with a condition reason (``BucketNotFound``, ``AccessDenied``,
``EndpointUnreachable``, ``S3Unavailable``, ``S3Error``), never a traceback in a status.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from amfs_operator.exceptions import S3ProbeError

log = logging.getLogger(__name__)

PROBE_DIR = ".amfs-probe"
_NOT_FOUND = {"404", "NoSuchBucket", "NotFound"}
_DENIED = {
    "403",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
}
_PRECONDITION = {"412", "PreconditionFailed", "409", "ConditionalRequestConflict"}
# Server-side failures and throttling: the provider is there but not serving (usually
# temporary). HEAD requests carry no error body, so botocore's code is the HTTP status.
_UNAVAILABLE = {
    "500",
    "502",
    "503",
    "504",
    "429",
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "Throttling",
    "ThrottlingException",
    "TooManyRequests",
    "RequestLimitExceeded",
}


@dataclass(frozen=True)
class Target:
    """One memory's place in S3 and how to reach it."""

    bucket: str
    root: str  # "{prefix}{namespace}/"
    endpoint_url: str | None
    region: str
    access_key_id: str | None = None  # None: boto3's chain, i.e. the operator's identity
    secret_access_key: str | None = None

    @property
    def uses_operator_identity(self) -> bool:
        return not (self.access_key_id and self.secret_access_key)

    def __repr__(self) -> str:  # never print the secret
        return f"Target(bucket={self.bucket!r}, root={self.root!r}, endpoint={self.endpoint_url!r})"


@dataclass(frozen=True)
class ProbeResult:
    created_bucket: bool
    conditional_writes: bool | None  # None: the probe itself failed (e.g. read-only keys)
    detail: str = ""


class ClientCache:
    """A small LRU of boto3 S3 clients (thread-safe; clients themselves are)."""

    def __init__(
        self, size: int = 64, *, timeout: float = 10.0, allow_operator_identity: bool = False
    ) -> None:
        self._size = size
        self.allow_operator_identity = allow_operator_identity
        self._clients: OrderedDict[tuple[str, ...], Any] = OrderedDict()
        self._lock = threading.Lock()
        self._config = botocore.config.Config(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"mode": "standard", "max_attempts": 2},
        )

    def client(self, target: Target) -> Any:
        if target.uses_operator_identity and not self.allow_operator_identity:
            raise S3ProbeError(
                "OperatorIdentityRefused",
                f"no credentials of the memory's own for bucket {target.bucket!r}, and the "
                "operator does not lend its own S3 identity (--allow-operator-identity)",
            )
        secret_hash = hashlib.sha256((target.secret_access_key or "").encode()).hexdigest()
        key = (target.endpoint_url or "", target.region, target.access_key_id or "", secret_hash)
        with self._lock:
            if key in self._clients:
                self._clients.move_to_end(key)
                return self._clients[key]
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=target.endpoint_url,
            region_name=target.region,
            aws_access_key_id=target.access_key_id,
            aws_secret_access_key=target.secret_access_key,
            config=self._config,
        )
        with self._lock:
            self._clients[key] = client
            while len(self._clients) > self._size:
                self._clients.popitem(last=False)
        return client


def probe(clients: ClientCache, target: Target, *, create: bool) -> ProbeResult:
    """HeadBucket (creating the bucket if asked), then a conditional-write probe."""
    s3 = clients.client(target)
    created = False
    try:
        with translated(target, "HeadBucket"):
            s3.head_bucket(Bucket=target.bucket)
    except S3ProbeError as exc:
        if exc.reason != "BucketNotFound" or not create:
            raise
        with translated(target, "CreateBucket"):
            _create_bucket(s3, target)
        created = True
    return ProbeResult(created, *_conditional_writes(s3, target))


def _create_bucket(s3: Any, target: Target) -> None:
    kwargs: dict[str, Any] = {"Bucket": target.bucket}
    if target.region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": target.region}
    try:
        s3.create_bucket(**kwargs)
    except botocore.exceptions.ClientError as exc:
        if _code(exc) != "BucketAlreadyOwnedByYou":
            raise


def _conditional_writes(s3: Any, target: Target) -> tuple[bool | None, str]:
    """PUT a fresh key twice with ``If-None-Match: *``: the second must be refused."""
    key = f"{target.root}{PROBE_DIR}/{uuid.uuid4().hex}"
    try:
        s3.put_object(Bucket=target.bucket, Key=key, Body=b"probe", IfNoneMatch="*")
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        return None, f"cannot write the probe object {key}: {_describe(exc)}"
    try:
        s3.put_object(Bucket=target.bucket, Key=key, Body=b"probe", IfNoneMatch="*")
        supported: bool | None = False
        detail = "a second PUT with If-None-Match: * overwrote the object"
    except botocore.exceptions.ClientError as exc:
        supported = True if _code(exc) in _PRECONDITION else None
        detail = "" if supported else f"unexpected answer to the second probe write: {_code(exc)}"
    finally:
        try:
            s3.delete_object(Bucket=target.bucket, Key=key)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            log.warning(
                "event=probe_cleanup_failed bucket=%s key=%s error=%s",
                target.bucket, key, _describe(exc),
            )
    return supported, detail


@contextlib.contextmanager
def translated(target: Target, operation: str) -> Iterator[None]:
    """Turn botocore failures into an :class:`S3ProbeError` with a condition reason."""
    where = f"bucket {target.bucket!r}"
    if target.endpoint_url:
        where += f" at {target.endpoint_url}"
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        code = _code(exc)
        reason = reason_of(code)
        if reason == "BucketNotFound":
            message = f"{where} does not exist (set createBucket: true to create it)"
        elif reason == "AccessDenied":
            message = f"{operation} on {where} was refused ({code}): check the credentials"
        elif reason == "S3Unavailable":
            message = (
                f"{operation} on {where} failed: {code} (the provider is unavailable or "
                "throttling requests; usually temporary, retried)"
            )
        else:
            message = f"{operation} on {where} failed: {code}"
        raise S3ProbeError(reason, message) from None
    except botocore.exceptions.NoCredentialsError:
        raise S3ProbeError(
            "CredentialsMissing",
            "no S3 credentials in the operator's environment (credentials.serviceAccount)",
        ) from None
    except botocore.exceptions.BotoCoreError as exc:
        raise S3ProbeError("EndpointUnreachable", f"{operation} on {where}: {exc}") from None


def _describe(exc: Exception) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return _code(exc)
    return str(exc)


def _code(exc: botocore.exceptions.ClientError) -> str:
    error = exc.response.get("Error", {})
    return str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))


def reason_of(code: str) -> str:
    if code in _NOT_FOUND:
        return "BucketNotFound"
    if code in _DENIED:
        return "AccessDenied"
    if code in _UNAVAILABLE:
        return "S3Unavailable"
    return "S3Error"
