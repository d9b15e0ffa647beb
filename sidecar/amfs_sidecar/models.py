"""Request and response bodies of the sidecar API.

These models both validate requests and generate the OpenAPI document
(:mod:`amfs_sidecar.openapi`), so the two cannot drift. Field names follow the
AMFS HTTP API (``entity_path``, ``key``, ``value``, ``confidence``, …) so AMFS
clients feel at home; ``expected_version`` is ours.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from amfs_core.models import (
    MemoryEntry,
    MemoryType,
    OutcomeRecord,
    OutcomeType,
    Provenance,
    SearchQuery,
)
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- requests ----------------------------------------------------------------


class WriteRequest(_Body):
    """A write in the AMFS HTTP API's shape: the sidecar stamps provenance."""

    entity_path: str = Field(description="Segments joined by '/', e.g. 'checkout-service'.")
    key: str = Field(description="One segment (no '/').")
    value: JsonValue = Field(description="Any JSON value.")
    confidence: float = Field(default=1.0, ge=0.0, le=1.0)
    memory_type: MemoryType = MemoryType.FACT
    pattern_refs: list[str] = Field(default_factory=list)
    agent_id: str = Field(min_length=1, description="Who writes; recorded in provenance.")
    session_id: str | None = Field(default=None, description="Default: a fresh id per request.")
    ttl_at: datetime | None = None
    expected_version: int | None = Field(
        default=None,
        ge=1,
        description="The current version this write replaces; 409 if another version was "
        "written since. Omit for last-writer-wins.",
    )

    def to_entry(self) -> MemoryEntry:
        """The entry to store; its version tells the adapter what to expect."""
        return MemoryEntry(
            entity_path=self.entity_path,
            key=self.key,
            # The adapter reads version > 1 as "the version to create".
            version=(self.expected_version + 1) if self.expected_version else 1,
            value=self.value,
            confidence=self.confidence,
            memory_type=self.memory_type,
            ttl_at=self.ttl_at,
            provenance=Provenance(
                agent_id=self.agent_id,
                session_id=self.session_id or f"http-{uuid.uuid4().hex[:12]}",
                written_at=datetime.now(UTC),
                pattern_refs=self.pattern_refs,
            ),
        )


class EntryWriteRequest(_Body):
    """A write of a complete ``MemoryEntry`` (what ``SidecarAdapter`` sends), stored as is.

    ``entry.version`` > 1 is the version to create (409 if it is not next);
    1 means last-writer-wins.
    """

    entry: MemoryEntry

    @field_validator("entry")
    @classmethod
    def _version_from_one(cls, entry: MemoryEntry) -> MemoryEntry:
        if entry.version < 1:
            raise ValueError(f"version {entry.version} is not allowed (versions start at 1; "
                             "1 means last-writer-wins, N > 1 the version to create)")
        return entry


class SearchRequest(_Body):
    """AMFS search filters; evaluated over the sidecar's index with AMFS semantics."""

    query: str | None = Field(default=None, description="Case-insensitive substring.")
    entity_path: str | None = None
    entity_paths: list[str] | None = None
    include_descendants: bool = False
    min_confidence: float = Field(default=0.0, ge=0.0, le=1.0)
    max_confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    agent_id: str | None = None
    since: datetime | None = None
    pattern_ref: str | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    sort_by: Literal["confidence", "recency", "version", "priority"] = "confidence"
    include_artifacts: bool = True

    def to_query(self) -> SearchQuery:
        return SearchQuery(**self.model_dump())


class OutcomeRequest(_Body):
    """An outcome in the AMFS HTTP API's shape."""

    outcome_ref: str = Field(description="One segment (no '/'); names the outcome object.")
    outcome_type: OutcomeType
    causal_entry_keys: list[str] = Field(
        default_factory=list, description="'entity_path/key' of the entries that caused it."
    )
    causal_confidence: float = Field(default=1.0, ge=0.0, le=1.0)
    agent_id: str = Field(min_length=1)

    def to_record(self) -> OutcomeRecord:
        return OutcomeRecord(
            outcome_ref=self.outcome_ref,
            outcome_type=self.outcome_type,
            causal_entry_keys=self.causal_entry_keys,
            causal_confidence=self.causal_confidence,
            agent_id=self.agent_id,
            committed_at=datetime.now(UTC),
        )


class OutcomeRecordRequest(_Body):
    """A complete ``OutcomeRecord`` (what ``SidecarAdapter`` sends)."""

    record: OutcomeRecord


# -- query strings -------------------------------------------------------------


class ReadParams(_Body):
    version: int | None = Field(default=None, ge=1, description="A historical version.")
    consistent: bool = Field(default=False, description="Bypass the index: LIST + GET on S3.")
    min_confidence: float = Field(default=0.0, ge=0.0, le=1.0)


class ListParams(_Body):
    entity_path: str | None = Field(default=None, description="Exact entity; omit for all.")
    subtree: bool = Field(default=False, description="Include entities below entity_path.")
    include_superseded: bool = False
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: str | None = Field(default=None, description="next_cursor of the previous page.")


class OutcomeParams(_Body):
    entity_path: str | None = None
    since: datetime | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    outcome_ref: str | None = None


class StreamParams(_Body):
    entity_path: str = Field(default="*", description="Subtree to watch; '*' for everything.")


# -- responses -----------------------------------------------------------------


class ErrorResponse(BaseModel):
    detail: str
    type: str | None = Field(default=None, description="The error class, for SDK clients.")
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Per-field problems (422)."
    )
    model_config = ConfigDict(extra="allow")


class EntryList(BaseModel):
    entries: list[MemoryEntry]
    next_cursor: str | None = None


class SearchResponse(BaseModel):
    entries: list[MemoryEntry]


class OutcomeCommitted(BaseModel):
    outcome: OutcomeRecord
    updated: list[MemoryEntry] = Field(description="Entries whose evidence changed.")


class OutcomeList(BaseModel):
    outcomes: list[OutcomeRecord]


class CacheStats(BaseModel):
    items: int
    bytes: int
    max_bytes: int
    hits: int
    misses: int
    evictions: int


class Stats(BaseModel):
    """Counts from the index; no S3 listing behind them."""

    entries: int
    versions: int
    outcomes: int
    entities: int
    watchers: int
    synced: bool
    conditional_writes_supported: bool | None
    last_poll_success_unix: float | None
    cache: CacheStats


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "starting", "unavailable"]
    synced: bool
    bucket_reachable: bool
    detail: str | None = None


ALL_MODELS: tuple[type[BaseModel], ...] = (
    WriteRequest,
    EntryWriteRequest,
    SearchRequest,
    OutcomeRequest,
    OutcomeRecordRequest,
    ErrorResponse,
    EntryList,
    SearchResponse,
    OutcomeCommitted,
    OutcomeList,
    Stats,
    Health,
    Readiness,
    MemoryEntry,
    OutcomeRecord,
)
