"""The AMFSMemory spec model: defaults, rules, and errors that name the field."""

from __future__ import annotations

import pytest

from amfs_operator.exceptions import SpecError
from amfs_operator.spec import Claim, parse_duration, parse_memory, parse_spec
from amfs_operator.storage_identity import places


def body(**spec: object) -> dict[str, object]:
    return {
        "metadata": {"name": "mem", "namespace": "team", "uid": "u-1", "generation": 3,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"bucket": "my-bucket", **spec},
    }


def test_defaults_follow_the_design() -> None:
    memory = parse_memory(body())
    spec = memory.spec
    assert (spec.prefix, spec.region, spec.deletion_policy, spec.create_bucket) == (
        "amfs/", "us-east-1", "Retain", False)
    assert spec.credentials.service_account == {} and spec.credentials.secret_ref is None
    assert (spec.sidecar.poll_interval, spec.sidecar.resync_interval) == (5.0, 300.0)
    assert memory.amfs_namespace == "mem"  # AMFS namespace defaults to metadata.name
    assert memory.root == "amfs/mem/"
    assert memory.generation == 3


def test_camel_case_fields_and_normalisation() -> None:
    spec = parse_spec({
        "bucket": "b-1.example", "prefix": "agents", "namespace": "prod",
        "endpointURL": "http://minio:9000/", "createBucket": True, "deletionPolicy": "Delete",
        "credentials": {"secretRef": {"name": "s3", "accessKeyIDKey": "id",
                                      "secretAccessKeyKey": "key"}},
        "sidecar": {"pollInterval": "500ms", "resyncInterval": "2m", "readOnly": True,
                    "scanPages": 50},
    })
    assert spec.prefix == "agents/"
    assert spec.endpoint_url == "http://minio:9000"
    assert spec.credentials.secret_ref is not None
    assert spec.credentials.secret_ref.access_key_id_key == "id"
    assert (spec.sidecar.poll_interval, spec.sidecar.resync_interval) == (0.5, 120.0)
    assert spec.sidecar.scan_pages == 50


@pytest.mark.parametrize(
    ("spec", "field", "rule"),
    [
        ({}, "spec.bucket", "is required"),
        ({"bucket": "UPPER"}, "spec.bucket", "not a valid bucket name"),
        ({"bucket": "ab"}, "spec.bucket", "not a valid bucket name"),
        ({"bucket": "b..c"}, "spec.bucket", "not a valid bucket name"),
        ({"bucket": "bkt", "prefix": "/abs"}, "spec.prefix", "must not start with '/'"),
        ({"bucket": "bkt", "prefix": "a/../b"}, "spec.prefix", "'.' or '..'"),
        ({"bucket": "bkt", "namespace": "a/b"}, "spec.namespace", "one path segment"),
        ({"bucket": "bkt", "endpointURL": "minio:9000"}, "spec.endpointURL", "http://"),
        ({"bucket": "bkt", "deletionPolicy": "Maybe"}, "spec.deletionPolicy", "Retain"),
        ({"bucket": "bkt", "credentials": {}}, "spec.credentials", "exactly one"),
        ({"bucket": "bkt", "credentials": {"secretRef": {"name": "s"}, "serviceAccount": {}}},
         "spec.credentials", "exactly one"),
        ({"bucket": "bkt", "credentials": {"secretRef": {"name": "s", "namespace": "other"}}},
         "spec.credentials.secretRef.namespace", "is not a known field"),
        ({"bucket": "bkt", "credentials": {"secretRef": {"name": "Bad_Name"}}},
         "spec.credentials.secretRef.name", "not a valid Secret name"),
        ({"bucket": "bkt", "sidecar": {"pollInterval": "soon"}}, "spec.sidecar.pollInterval",
         "not a duration"),
        ({"bucket": "bkt", "sidecar": {"pollInterval": "0s"}}, "spec.sidecar.pollInterval",
         "greater than zero"),
        ({"bucket": "bkt", "sidecar": {"scanPages": 0}}, "spec.sidecar.scanPages",
         "greater than or equal to 1"),
        ({"bucket": "bkt", "sidecar": {"scanPages": 1001}}, "spec.sidecar.scanPages",
         "less than or equal to 1000"),
        ({"bucket": "bkt", "sidecar": {"scanPages": "50"}}, "spec.sidecar.scanPages",
         "valid integer"),
        ({"bucket": "bkt", "sidecar": {"scanPages": True}}, "spec.sidecar.scanPages",
         "valid integer"),
        ({"bucket": "bkt", "bukket": "typo"}, "spec.bukket", "is not a known field"),
    ],
)
def test_bad_input_names_field_and_rule(spec: dict[str, object], field: str, rule: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    message = str(caught.value)
    assert field in message and rule in message


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec({"bucket": "X", "deletionPolicy": "No"})
    assert "spec.bucket" in str(caught.value) and "spec.deletionPolicy" in str(caught.value)


@pytest.mark.parametrize(("text", "seconds"), [("5s", 5), ("250ms", 0.25), ("5m", 300),
                                                ("1h", 3600), ("7", 7), (2.5, 2.5)])
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


def claim(ns: str, root: str, created: str = "2026-01-01T00:00:00Z", name: str = "m",
          endpoint: str | None = None, bucket: str = "b") -> Claim:
    return Claim(places(endpoint, "us-east-1", bucket, ns), bucket, root, ns, name, created)


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("amfs/x/", "amfs/x/", True),
        ("amfs/x/", "amfs/x/y/z/", True),
        ("amfs/x/y/", "amfs/x/", True),
        ("amfs/x/", "amfs/xy/", False),  # a shared text prefix is not nesting
        ("amfs/x/", "other/x/", False),
    ],
)
def test_claims_overlap_only_when_nested(a: str, b: str, overlap: bool) -> None:
    assert claim("n1", a).overlaps(claim("n2", b)) is overlap
    assert claim("n2", b).overlaps(claim("n1", a)) is overlap


def test_claims_on_other_buckets_or_endpoints_never_overlap() -> None:
    assert not claim("n1", "amfs/x/", bucket="b1").overlaps(claim("n2", "amfs/x/", bucket="b2"))
    assert not claim("n1", "amfs/x/").overlaps(claim("n2", "amfs/x/", endpoint="http://minio.s3.svc"))


def test_endpoint_is_part_of_the_claim() -> None:
    aws = parse_memory(body()).claim
    minio = parse_memory(body(endpointURL="http://MinIO:9000")).claim
    assert aws.index_keys == {("aws:aws", "my-bucket")}
    # A short Service name is the Service of the memory's own namespace.
    assert ("minio.team.svc.cluster.local:9000", "my-bucket") in minio.index_keys
    assert not aws.overlaps(minio)


@pytest.mark.parametrize(("endpoint", "rule"), [
    ("http://127.0.0.1:9000/victim-bucket", "has a path"),
    ("http://user@127.0.0.1:9000", "user information"),
    ("http://127.0.0.1:9000?a=b", "query or fragment"),
    ("minio:9000", "must start with http:// or https://"),
])
def test_endpoint_is_a_server_only(endpoint: str, rule: str) -> None:
    with pytest.raises(SpecError, match=f"spec.endpointURL: .*{rule}"):
        parse_spec({"bucket": "bkt", "endpointURL": endpoint})


def test_endpoint_spelling_is_kept_as_written() -> None:
    # The ConfigMap keeps the user's spelling; only claims use the canonical identity.
    assert parse_spec({"bucket": "bkt", "endpointURL": "http://LocalHost:09000/"}).endpoint_url \
        == "http://LocalHost:09000"
