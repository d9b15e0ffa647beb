"""The one configuration schema for the adapter, the sidecar and the operator.

Three forms, as in the AMFS docs: programmatic (``S3Settings(...)``), the AMFS
YAML file (``namespace`` + ``layers.primary.adapter: s3`` + ``options``) and
environment variables. The operator renders the YAML and env forms into a
ConfigMap with :func:`to_amfs_yaml` and :func:`to_env`, so what it writes is
exactly what the sidecar reads back.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from amfs_s3.exceptions import ConfigError

DEFAULT_PREFIX = "amfs/"
DEFAULT_REGION = "us-east-1"
DEFAULT_NAMESPACE = "default"
DEFAULT_POLL_INTERVAL = 5.0
DEFAULT_RESYNC_INTERVAL = 300.0
# Per S3 operation: one attempt's bounds, how many attempts, and the total they may take.
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 10.0
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_OPERATION_DEADLINE = 20.0

ENV_BUCKET = "AMFS_S3_BUCKET"
ENV_PREFIX = "AMFS_S3_PREFIX"
ENV_ENDPOINT = "AMFS_S3_ENDPOINT"
ENV_REGION = "AWS_DEFAULT_REGION"
ENV_NAMESPACE = "AMFS_NAMESPACE"
ENV_POLL_INTERVAL = "AMFS_POLL_INTERVAL"
ENV_RESYNC_INTERVAL = "AMFS_RESYNC_INTERVAL"
ENV_CONNECT_TIMEOUT = "AMFS_S3_CONNECT_TIMEOUT"
ENV_READ_TIMEOUT = "AMFS_S3_READ_TIMEOUT"
ENV_MAX_ATTEMPTS = "AMFS_S3_MAX_ATTEMPTS"
ENV_OPERATION_DEADLINE = "AMFS_S3_OPERATION_DEADLINE"
ENV_ACCESS_KEY = "AWS_ACCESS_KEY_ID"
ENV_SECRET_KEY = "AWS_SECRET_ACCESS_KEY"
ENV_CONFIG_FILE = "AMFS_CONFIG"

# File names inside a mounted credentials directory (a Kubernetes Secret volume).
CREDENTIAL_FILES = {
    "aws_access_key_id": ENV_ACCESS_KEY,
    "aws_secret_access_key": ENV_SECRET_KEY,
}


class S3Settings(BaseModel):
    """Where a memory lives and how to reach it. Secrets are ``SecretStr``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bucket: str = Field(min_length=3, max_length=63)
    prefix: str = DEFAULT_PREFIX
    namespace: str = Field(default=DEFAULT_NAMESPACE, min_length=1)
    endpoint_url: str | None = None
    region_name: str = DEFAULT_REGION
    aws_access_key_id: SecretStr | None = None
    aws_secret_access_key: SecretStr | None = None
    poll_interval: float = Field(default=DEFAULT_POLL_INTERVAL, gt=0)
    resync_interval: float = Field(default=DEFAULT_RESYNC_INTERVAL, gt=0)
    connect_timeout: float = Field(default=DEFAULT_CONNECT_TIMEOUT, gt=0)
    read_timeout: float = Field(default=DEFAULT_READ_TIMEOUT, gt=0)
    max_attempts: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1)
    # None: DEFAULT_OPERATION_DEADLINE, or one whole attempt if that is longer.
    operation_deadline: float | None = Field(default=None, gt=0)

    @property
    def deadline_seconds(self) -> float:
        """How long one S3 operation may take, retries included."""
        if self.operation_deadline is not None:
            return self.operation_deadline
        return max(DEFAULT_OPERATION_DEADLINE, self.connect_timeout + self.read_timeout)

    @model_validator(mode="after")
    def _deadline_fits_an_attempt(self) -> S3Settings:
        attempt = self.connect_timeout + self.read_timeout
        if self.operation_deadline is not None and self.operation_deadline < attempt:
            raise ValueError(
                f"operation_deadline {self.operation_deadline:g} s is shorter than one attempt "
                f"(connect_timeout {self.connect_timeout:g} + read_timeout "
                f"{self.read_timeout:g} = {attempt:g} s); rule: operation_deadline >= "
                "connect_timeout + read_timeout"
            )
        return self

    @field_validator("prefix")
    @classmethod
    def _prefix_ends_with_slash(cls, value: str) -> str:
        if value and not value.endswith("/"):
            return value + "/"
        if value.startswith("/"):
            raise ValueError("prefix must not start with '/'")
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace_is_one_segment(cls, value: str) -> str:
        if "/" in value or value in {".", ".."}:
            raise ValueError("namespace must be one path segment (no '/', not '.' or '..')")
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_is_http(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("endpoint_url must start with http:// or https://")
        return value.rstrip("/")


def _settings(values: Mapping[str, Any], source: str) -> S3Settings:
    """Validate *values*, turning pydantic's report into one readable ConfigError."""
    try:
        return S3Settings(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid AMFS S3 configuration from {source}: {problems}") from None


def from_mapping(options: Mapping[str, Any], *, namespace: str | None = None) -> S3Settings:
    """Settings from adapter options, the ``options`` block of the AMFS YAML."""
    values = dict(options)
    if namespace is not None:
        values.setdefault("namespace", namespace)
    if not values.get("bucket"):
        raise ConfigError("bucket is required (options.bucket in YAML, AMFS_S3_BUCKET in env)")
    return _settings(values, "options")


def parse_amfs_yaml(text: str, *, source: str = "YAML") -> S3Settings:
    """Settings from the AMFS YAML document (the ``primary`` layer must be ``s3``)."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping")
    layer = (raw.get("layers") or {}).get("primary")
    if not isinstance(layer, dict):
        raise ConfigError(f"{source}: layers.primary is required")
    if layer.get("adapter") != "s3":
        raise ConfigError(
            f"{source}: layers.primary.adapter is {layer.get('adapter')!r}; this adapter needs 's3'"
        )
    options = layer.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"{source}: layers.primary.options must be a mapping")
    try:
        return from_mapping(options, namespace=raw.get("namespace", DEFAULT_NAMESPACE))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_amfs_yaml(path: str | Path) -> S3Settings:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read AMFS config file {path}: {exc.strerror}") from None
    return parse_amfs_yaml(text, source=str(path))


def from_env(env: Mapping[str, str] | None = None) -> S3Settings:
    """Settings from environment variables; credentials stay with boto3's chain
    unless both key variables are set."""
    env = os.environ if env is None else env
    if not env.get(ENV_BUCKET):
        raise ConfigError(f"{ENV_BUCKET} is required: the name of the S3 bucket to use")
    values: dict[str, Any] = {
        "bucket": env[ENV_BUCKET],
        "prefix": env.get(ENV_PREFIX, DEFAULT_PREFIX),
        "namespace": env.get(ENV_NAMESPACE, DEFAULT_NAMESPACE),
        "endpoint_url": env.get(ENV_ENDPOINT) or None,
        "region_name": env.get(ENV_REGION) or DEFAULT_REGION,
        "poll_interval": env.get(ENV_POLL_INTERVAL),
        "resync_interval": env.get(ENV_RESYNC_INTERVAL),
        "connect_timeout": env.get(ENV_CONNECT_TIMEOUT) or None,
        "read_timeout": env.get(ENV_READ_TIMEOUT) or None,
        "max_attempts": env.get(ENV_MAX_ATTEMPTS) or None,
        "operation_deadline": env.get(ENV_OPERATION_DEADLINE) or None,
    }
    return _settings(values, "environment")


def read_credentials_dir(directory: str | Path) -> dict[str, SecretStr]:
    """Credentials from a mounted Secret: files named like the env variables
    (``AWS_ACCESS_KEY_ID``) or like the options (``aws_access_key_id``)."""
    directory = Path(directory)
    found: dict[str, SecretStr] = {}
    for option, env_name in CREDENTIAL_FILES.items():
        for name in (env_name, option):
            path = directory / name
            if path.is_file():
                found[option] = SecretStr(path.read_text(encoding="utf-8").strip())
                break
    return found


def to_amfs_yaml(settings: S3Settings) -> str:
    """The AMFS YAML document for *settings*, without credentials."""
    options: dict[str, Any] = {"bucket": settings.bucket, "prefix": settings.prefix}
    if settings.endpoint_url:
        options["endpoint_url"] = settings.endpoint_url
    options["region_name"] = settings.region_name
    options["poll_interval"] = settings.poll_interval
    options["resync_interval"] = settings.resync_interval
    doc = {
        "namespace": settings.namespace,
        "layers": {"primary": {"adapter": "s3", "options": options}},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def to_env(settings: S3Settings) -> dict[str, str]:
    """The environment form of *settings*, without credentials."""
    env = {
        ENV_BUCKET: settings.bucket,
        ENV_PREFIX: settings.prefix,
        ENV_NAMESPACE: settings.namespace,
        ENV_REGION: settings.region_name,
        ENV_POLL_INTERVAL: _number(settings.poll_interval),
        ENV_RESYNC_INTERVAL: _number(settings.resync_interval),
    }
    if settings.endpoint_url:
        env[ENV_ENDPOINT] = settings.endpoint_url
    return env


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
