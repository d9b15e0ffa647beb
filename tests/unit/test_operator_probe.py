"""How S3 failures become condition reasons (pure: no S3 involved)."""

from __future__ import annotations

import botocore.exceptions
import pytest

from amfs_operator.exceptions import KubeError, S3ProbeError
from amfs_operator.probe import ClientCache, Target, reason_of, translated

TARGET = Target("bkt", "amfs/ns/", "http://s3.example:9000", "us-east-1")


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("404", "BucketNotFound"),
        ("NoSuchBucket", "BucketNotFound"),
        ("403", "AccessDenied"),
        ("SignatureDoesNotMatch", "AccessDenied"),
        ("503", "S3Unavailable"),  # a HEAD carries no body: the code is the HTTP status
        ("SlowDown", "S3Unavailable"),
        ("500", "S3Unavailable"),
        ("InternalError", "S3Unavailable"),
        ("429", "S3Unavailable"),
        ("400", "S3Error"),
        ("InvalidArgument", "S3Error"),
    ],
)
def test_reason_of(code: str, reason: str) -> None:
    assert reason_of(code) == reason


def test_unavailable_provider_is_named_as_such() -> None:
    error = botocore.exceptions.ClientError(
        {"Error": {"Code": "503", "Message": "Service Unavailable"}}, "HeadBucket"
    )
    with pytest.raises(S3ProbeError) as raised, translated(TARGET, "HeadBucket"):
        raise error
    assert raised.value.reason == "S3Unavailable"
    assert raised.value.message == (
        "HeadBucket on bucket 'bkt' at http://s3.example:9000 failed: 503 (the provider "
        "is unavailable or throttling requests; usually temporary, retried)"
    )


@pytest.mark.parametrize(("status", "transient"),
                         [(0, True), (429, True), (500, True), (503, True),
                          (400, False), (403, False), (404, False), (409, False), (422, False)])
def test_kube_error_transient(status: int, transient: bool) -> None:
    assert KubeError("PATCH", "/x", status, "detail").transient is transient


def test_no_client_with_the_operators_identity_unless_allowed() -> None:
    ambient = Target("bkt", "amfs/ns/", "http://127.0.0.1:9", "us-east-1")
    with pytest.raises(S3ProbeError) as raised:
        ClientCache().client(ambient)
    assert raised.value.reason == "OperatorIdentityRefused"
    assert "--allow-operator-identity" in raised.value.message
    # Half a key pair is no key pair: it would fall back to the operator's chain too.
    half = Target("bkt", "amfs/ns/", "http://127.0.0.1:9", "us-east-1", access_key_id="AKIA")
    with pytest.raises(S3ProbeError):
        ClientCache().client(half)
    assert ClientCache(allow_operator_identity=True).client(ambient) is not None
    keyed = Target("bkt", "amfs/ns/", "http://127.0.0.1:9", "us-east-1",
                   access_key_id="AKIA", secret_access_key="s")
    assert ClientCache().client(keyed) is not None
