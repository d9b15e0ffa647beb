"""The one configuration schema, in its three forms."""

from __future__ import annotations

from pathlib import Path

import pytest

from amfs_s3 import config
from amfs_s3.exceptions import ConfigError

YAML = """
namespace: production
layers:
  primary:
    adapter: s3
    options:
      bucket: my-amfs-bucket
      prefix: amfs/
      endpoint_url: http://minio:9000
      region_name: eu-west-1
"""


def test_yaml_form() -> None:
    settings = config.parse_amfs_yaml(YAML)
    assert settings.bucket == "my-amfs-bucket"
    assert settings.namespace == "production"
    assert settings.endpoint_url == "http://minio:9000"
    assert settings.region_name == "eu-west-1"
    assert settings.prefix == "amfs/"


def test_yaml_file_form(tmp_path: Path) -> None:
    path = tmp_path / "amfs.yaml"
    path.write_text(YAML)
    assert config.load_amfs_yaml(path).bucket == "my-amfs-bucket"


def test_missing_yaml_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read AMFS config file"):
        config.load_amfs_yaml(tmp_path / "nope.yaml")


def test_yaml_with_another_adapter_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"layers\.primary\.adapter is 'filesystem'"):
        config.parse_amfs_yaml("layers: {primary: {adapter: filesystem}}")


def test_yaml_without_bucket_is_refused() -> None:
    with pytest.raises(ConfigError, match="bucket is required"):
        config.parse_amfs_yaml("layers: {primary: {adapter: s3, options: {}}}")


def test_env_form_defaults() -> None:
    settings = config.from_env({"AMFS_S3_BUCKET": "bkt"})
    assert settings.prefix == "amfs/"
    assert settings.region_name == "us-east-1"
    assert settings.namespace == "default"
    assert settings.endpoint_url is None
    assert settings.aws_access_key_id is None


def test_env_form_overrides() -> None:
    settings = config.from_env(
        {
            "AMFS_S3_BUCKET": "bkt",
            "AMFS_S3_PREFIX": "mem",
            "AMFS_S3_ENDPOINT": "https://s3.example:9000/",
            "AWS_DEFAULT_REGION": "eu-central-1",
            "AMFS_POLL_INTERVAL": "2.5",
        }
    )
    assert settings.prefix == "mem/"
    assert settings.endpoint_url == "https://s3.example:9000"
    assert settings.region_name == "eu-central-1"
    assert settings.poll_interval == 2.5


def test_env_without_bucket_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="AMFS_S3_BUCKET is required"):
        config.from_env({})


def test_bad_values_name_the_field() -> None:
    with pytest.raises(ConfigError, match="poll_interval"):
        config.from_env({"AMFS_S3_BUCKET": "bkt", "AMFS_POLL_INTERVAL": "-1"})
    with pytest.raises(ConfigError, match="endpoint_url"):
        config.from_env({"AMFS_S3_BUCKET": "bkt", "AMFS_S3_ENDPOINT": "minio:9000"})


def test_rendered_forms_round_trip() -> None:
    settings = config.parse_amfs_yaml(YAML)
    assert config.parse_amfs_yaml(config.to_amfs_yaml(settings)) == settings
    assert config.from_env(config.to_env(settings)) == settings


def test_rendered_forms_never_carry_credentials() -> None:
    settings = config.S3Settings(
        bucket="bkt",
        aws_access_key_id="AKIAEXAMPLE",  # type: ignore[arg-type]
        aws_secret_access_key="very-secret",  # type: ignore[arg-type]
    )
    assert "very-secret" not in config.to_amfs_yaml(settings)
    assert "very-secret" not in str(config.to_env(settings))
    assert "very-secret" not in repr(settings)


def test_credentials_dir(tmp_path: Path) -> None:
    (tmp_path / "AWS_ACCESS_KEY_ID").write_text("AKIA1\n")
    (tmp_path / "aws_secret_access_key").write_text("s3cr3t")
    found = config.read_credentials_dir(tmp_path)
    assert found["aws_access_key_id"].get_secret_value() == "AKIA1"
    assert found["aws_secret_access_key"].get_secret_value() == "s3cr3t"
