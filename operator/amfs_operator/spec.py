"""Typed model of the AMFSMemory custom resource: spec, status and the storage claim.

Pydantic at the edge: a raw ``spec`` dict from the API becomes a :class:`MemorySpec`
or a :class:`SpecError` whose message names the field and the rule. Nothing here
talks to Kubernetes or S3.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from amfs_operator import API_VERSION, KIND, storage_identity
from amfs_operator.exceptions import SpecError
from amfs_operator.storage_identity import Place

DEFAULT_ACCESS_KEY_ID_KEY = "AWS_ACCESS_KEY_ID"
DEFAULT_SECRET_ACCESS_KEY_KEY = "AWS_SECRET_ACCESS_KEY"
# The lease holder's LIST pages of entries/ per resync interval: the sidecar's own default
# (amfs_sidecar.sync.SCAN_PAGES_PER_INTERVAL; a test keeps the two equal, as the operator
# does not import the sidecar). At most a million keys an interval.
DEFAULT_SCAN_PAGES = 5
MAX_SCAN_PAGES = 1000

# S3 bucket naming rules (the subset every S3-compatible provider accepts).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# A Kubernetes object name (DNS-1123 subdomain).
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
# A key inside a Secret's data.
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: str | float | int) -> float:
    """Seconds from ``"500ms"``, ``"5s"``, ``"5m"``, ``"1h"`` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as '5s', '5m' or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(
                f"{value!r} is not a duration (use a number with ms, s, m or h, e.g. '5s')"
            )
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SecretRef(_Model):
    """A Secret in the memory's own namespace; there is deliberately no namespace field."""

    name: str
    access_key_id_key: str = Field(DEFAULT_ACCESS_KEY_ID_KEY, alias="accessKeyIDKey")
    secret_access_key_key: str = Field(DEFAULT_SECRET_ACCESS_KEY_KEY, alias="secretAccessKeyKey")

    @field_validator("name")
    @classmethod
    def _name_is_k8s_name(cls, value: str) -> str:
        if not _K8S_NAME.match(value):
            raise ValueError(f"{value!r} is not a valid Secret name (DNS-1123 subdomain)")
        return value

    @field_validator("access_key_id_key", "secret_access_key_key")
    @classmethod
    def _key_is_secret_key(cls, value: str) -> str:
        if not _SECRET_KEY.match(value):
            raise ValueError(
                f"{value!r} is not a valid Secret key (letters, digits, '-', '_', '.')"
            )
        return value


class Credentials(_Model):
    """Exactly one source: a Secret, or the pod's ambient identity (no static keys)."""

    secret_ref: SecretRef | None = Field(None, alias="secretRef")
    service_account: dict[str, Any] | None = Field(None, alias="serviceAccount")

    @model_validator(mode="after")
    def _exactly_one(self) -> Credentials:
        if (self.secret_ref is None) == (self.service_account is None):
            raise ValueError("set exactly one of secretRef or serviceAccount")
        return self


class SidecarSpec(_Model):
    poll_interval: float = Field(5.0, alias="pollInterval")
    resync_interval: float = Field(300.0, alias="resyncInterval")
    read_only: bool = Field(False, alias="readOnly")
    scan_pages: int = Field(DEFAULT_SCAN_PAGES, alias="scanPages", ge=1, le=MAX_SCAN_PAGES,
                            strict=True)
    resources: dict[str, Any] = Field(default_factory=dict)

    @field_validator("poll_interval", "resync_interval", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)


class MemorySpec(_Model):
    """``AMFSMemory.spec``; field names follow the CRD (camelCase aliases)."""

    bucket: str
    prefix: str = "amfs/"
    namespace: str | None = None
    endpoint_url: str | None = Field(None, alias="endpointURL")
    region: str = "us-east-1"
    credentials: Credentials = Field(
        default_factory=lambda: Credentials(serviceAccount={})  # type: ignore[call-arg]
    )
    create_bucket: bool = Field(False, alias="createBucket")
    deletion_policy: Literal["Retain", "Delete"] = Field("Retain", alias="deletionPolicy")
    sidecar: SidecarSpec = Field(default_factory=SidecarSpec)  # type: ignore[arg-type]

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        if not _BUCKET.match(value) or ".." in value:
            raise ValueError(
                f"{value!r} is not a valid bucket name (3-63 lowercase letters, digits, "
                "'.' and '-', starting and ending with a letter or digit)"
            )
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if value.startswith("/"):
            raise ValueError("must not start with '/'")
        if any(segment in {".", ".."} for segment in value.split("/")):
            raise ValueError("segments may not be '.' or '..'")
        if value and not value.endswith("/"):
            value += "/"
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        if value is not None and ("/" in value or value in {"", ".", ".."}):
            raise ValueError(f"{value!r} must be one path segment (no '/', not '.' or '..')")
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        storage_identity.parse_endpoint(value)  # the ValueError names what is wrong
        return value.rstrip("/")


@dataclass(frozen=True)
class Claim:
    """Where a memory's data lives: the part of the storage it owns.

    ``places`` is the canonical storage identity (:mod:`amfs_operator.storage_identity`),
    never the endpoint's spelling. Two claims overlap when one root is a prefix of the
    other (equal roots included) at some shared place, whatever their namespaces.
    """

    places: frozenset[Place]
    bucket: str
    root: str  # "{prefix}{amfs namespace}/"
    namespace: str  # Kubernetes namespace of the AMFSMemory
    name: str
    created: str  # metadata.creationTimestamp, RFC 3339 (sorts as text)
    bound: bool = False  # already reconciled onto this location (it has its ConfigMap)

    @property
    def index_keys(self) -> frozenset[tuple[str, str]]:
        """(service, bucket) of every place: the claim index's keys."""
        return frozenset((p.service, p.bucket) for p in self.places)

    @property
    def key(self) -> tuple[str, str]:
        """The memory that holds the claim."""
        return (self.namespace, self.name)

    @functools.cached_property
    def locations(self) -> frozenset[storage_identity.Location]:
        return storage_identity.locations(self.places, self.root)

    def overlaps(self, other: Claim) -> bool:
        return storage_identity.locations_overlap(self.locations, other.locations)

    def claimed_by(self, other: Claim) -> set[str]:
        """Key prefixes (as this memory's requests spell keys) under *other*'s root."""
        return storage_identity.claimed_prefixes(self.places, self.root, other.places, other.root)


@dataclass(frozen=True)
class Memory:
    """An AMFSMemory as the reconciler sees it: identity plus the validated spec."""

    name: str
    namespace: str
    uid: str
    generation: int | None
    created: str
    spec: MemorySpec
    bound: bool = False  # status.configMapName is set: it holds its claim already

    @property
    def amfs_namespace(self) -> str:
        return self.spec.namespace or self.name

    @property
    def root(self) -> str:
        return f"{self.spec.prefix}{self.amfs_namespace}/"

    @property
    def claim(self) -> Claim:
        spec = self.spec
        found = storage_identity.places(spec.endpoint_url, spec.region, spec.bucket,
                                        self.namespace)
        return Claim(found, spec.bucket, self.root, self.namespace, self.name,
                     self.created, self.bound)

    @property
    def owner_reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def parse_spec(raw: Mapping[str, Any] | None) -> MemorySpec:
    """Validate a raw spec; one :class:`SpecError` lists every problem by field."""
    try:
        return MemorySpec.model_validate(dict(raw or {}))
    except ValidationError as exc:
        problems = "; ".join(
            f"spec.{'.'.join(str(p) for p in err['loc'])}: {_message(err)}" for err in exc.errors()
        )
        raise SpecError(problems) from None


def parse_memory(body: Mapping[str, Any]) -> Memory:
    """The reconciler's view of an AMFSMemory body (raises :class:`SpecError`)."""
    meta = body.get("metadata") or {}
    return Memory(
        name=meta["name"],
        namespace=meta.get("namespace") or "default",
        uid=meta.get("uid", ""),
        generation=meta.get("generation"),
        created=meta.get("creationTimestamp") or "",
        spec=parse_spec(body.get("spec")),
        bound=bool((body.get("status") or {}).get("configMapName")),
    )


def _message(err: Any) -> str:
    message = str(err["msg"])
    for noise in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(noise)
    if err["type"] == "extra_forbidden":
        return "is not a known field"
    if err["type"] == "missing":
        return "is required"
    return message


# ---- status ------------------------------------------------------------------------------

ConditionStatus = Literal["True", "False", "Unknown"]
CONDITION_TYPES = ("Ready", "CredentialsReady", "BucketReachable", "ConditionalWrites")
PHASES = ("Pending", "Ready", "Failed", "Deleting")


class Condition(_Model):
    """A ``metav1.Condition``."""

    type: str
    status: ConditionStatus
    reason: str
    message: str = ""
    observed_generation: int | None = Field(None, alias="observedGeneration")
    last_transition_time: str | None = Field(None, alias="lastTransitionTime")

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class MemoryStatus(_Model):
    observed_generation: int | None = Field(None, alias="observedGeneration")
    phase: str = "Pending"
    conditions: tuple[Condition, ...] = ()
    config_map_name: str | None = Field(None, alias="configMapName")
    secret_name: str | None = Field(None, alias="secretName")

    def as_dict(self) -> dict[str, Any]:
        """The status as stored; unset names are ``None`` so a merge patch clears them."""
        return {
            "observedGeneration": self.observed_generation,
            "phase": self.phase,
            "conditions": [c.as_dict() for c in self.conditions],
            "configMapName": self.config_map_name,
            "secretName": self.secret_name,
        }

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


def parse_status(raw: Mapping[str, Any] | None) -> MemoryStatus:
    """The stored status, tolerating anything unknown (it is our own, but be lenient)."""
    raw = raw or {}
    conditions = []
    for item in raw.get("conditions") or []:
        try:
            conditions.append(Condition.model_validate(item))
        except ValidationError:
            continue
    return MemoryStatus(  # type: ignore[call-arg]
        observedGeneration=raw.get("observedGeneration"),
        phase=raw.get("phase") or "Pending",
        conditions=tuple(conditions),
        configMapName=raw.get("configMapName"),
        secretName=raw.get("secretName"),
    )
