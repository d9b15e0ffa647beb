"""``S3Adapter()`` takes what it is not given from the documented environment.

Constructing an adapter sends no request, so these need no S3 server.
"""

from __future__ import annotations

import pytest

from amfs_s3 import S3Adapter
from amfs_s3.exceptions import ConfigError

DOCUMENTED = ("AMFS_S3_BUCKET", "AMFS_S3_PREFIX", "AMFS_S3_ENDPOINT", "AMFS_NAMESPACE",
              "AWS_DEFAULT_REGION")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in DOCUMENTED:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_no_arguments_reads_every_documented_variable(env: pytest.MonkeyPatch) -> None:
    env.setenv("AMFS_S3_BUCKET", "from-env")
    env.setenv("AMFS_S3_PREFIX", "team/")
    env.setenv("AMFS_S3_ENDPOINT", "http://minio:9000")
    env.setenv("AMFS_NAMESPACE", "prod")
    env.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    with S3Adapter() as adapter:
        s = adapter.settings
        assert (s.bucket, s.prefix, s.endpoint_url, s.namespace, s.region_name) == (
            "from-env", "team/", "http://minio:9000", "prod", "eu-west-1")


def test_the_documented_defaults(env: pytest.MonkeyPatch) -> None:
    env.setenv("AMFS_S3_BUCKET", "from-env")
    with S3Adapter() as adapter:
        s = adapter.settings
        assert (s.prefix, s.endpoint_url, s.namespace, s.region_name) == (
            "amfs/", None, "default", "us-east-1")


def test_arguments_win_and_an_empty_endpoint_means_aws(env: pytest.MonkeyPatch) -> None:
    env.setenv("AMFS_S3_BUCKET", "from-env")
    env.setenv("AMFS_S3_ENDPOINT", "http://minio:9000")
    env.setenv("AMFS_S3_PREFIX", "team/")
    with S3Adapter(bucket="given", endpoint_url="", prefix="") as adapter:
        assert (adapter.settings.bucket, adapter.settings.endpoint_url,
                adapter.settings.prefix) == ("given", None, "")


def test_no_bucket_either_way_is_one_error_naming_both(env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as caught:
        S3Adapter()
    assert "S3Adapter(bucket=...)" in str(caught.value)
    assert "AMFS_S3_BUCKET" in str(caught.value)
