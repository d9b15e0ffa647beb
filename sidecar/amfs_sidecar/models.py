"""Request and response bodies of the sidecar API.

These models both validate requests and generate the OpenAPI document
(:mod:`amfs_sidecar.openapi`), so the two cannot drift. Field names, defaults and
response shapes follow the AMFS HTTP API (``amfs-http-server`` 0.3.66): unknown
fields and query parameters are ignored as upstream ignores them (its clients
always send more than the sidecar uses), while every field the sidecar does use
is validated strictly. ``expected_version`` and our response extras sit beside
upstream's fields, never instead of them.
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
from pydantic import BaseModel, ConfigDict, Field, JsonValue, RootModel, field_validator

MAIN_BRANCH = "main"
BRANCH_RULE = "this sidecar stores one line of history: branch must be 'main' or omitted"


class _Body(BaseModel):
    # As amfs-http-server: what a client sends beyond what is used is ignored.
    model_config = ConfigDict(extra="ignore")


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _main_only(value: str | None) -> str | None:
    if value not in (None, "", MAIN_BRANCH):
        raise ValueError(f"branch {value!r} is not available ({BRANCH_RULE})")
    return value


# -- requests ----------------------------------------------------------------


class WriteRequest(_Body):
    """A write in the AMFS HTTP API's shape: the sidecar stamps provenance."""

    entity_path: str = Field(description="Segments joined by '/', e.g. 'checkout-service'.")
    key: str = Field(description="One name; may contain '/' (stored as one escaped segment).")
    value: JsonValue = Field(default=None, description="Any JSON value.")
    confidence: float = Field(default=1.0, ge=0.0, le=1.0)
    memory_type: MemoryType = Field(default=MemoryType.FACT,
                                    description="fact, belief, experience or procedure "
                                    "(any case).")
    pattern_refs: list[str] = Field(default_factory=list)
    shared: bool = True
    branch: str | None = Field(default=None, description=BRANCH_RULE)
    agent_id: str | None = Field(
        default=None, min_length=1,
        description="Who writes; recorded in provenance. Default: the X-AMFS-Agent-Id header, "
        "else the sidecar's --agent-id.",
    )
    session_id: str | None = Field(default=None, description="Default: a fresh id per request.")
    ttl_at: datetime | None = None
    expected_version: int | None = Field(
        default=None,
        ge=1,
        description="The current version this write replaces; 409 if another version was "
        "written since. Omit for last-writer-wins.",
    )

    _memory_type = field_validator("memory_type", mode="before")(_lower)
    _branch = field_validator("branch")(_main_only)

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
            shared=self.shared,
            ttl_at=self.ttl_at,
            provenance=Provenance(
                agent_id=self.agent_id or "",
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
    branch: str | None = Field(default=None, description=BRANCH_RULE)

    _branch = field_validator("branch")(_main_only)

    def to_query(self) -> SearchQuery:
        return SearchQuery(**self.model_dump(exclude={"branch"}))


class OutcomeRequest(_Body):
    """An outcome in the AMFS HTTP API's shape."""

    outcome_ref: str = Field(description="Names the outcome object; may contain '/'.")
    outcome_type: OutcomeType = Field(description="e.g. success, failure (any case).")
    causal_entry_keys: list[str] | None = Field(
        default=None, description="'entity_path/key' of the entries that caused it."
    )
    causal_confidence: float = Field(default=1.0, ge=0.0, le=1.0)
    agent_id: str | None = Field(
        default=None, min_length=1,
        description="Default: the X-AMFS-Agent-Id header, else the sidecar's --agent-id.",
    )

    _outcome_type = field_validator("outcome_type", mode="before")(_lower)

    def to_record(self) -> OutcomeRecord:
        return OutcomeRecord(
            outcome_ref=self.outcome_ref,
            outcome_type=self.outcome_type,
            causal_entry_keys=self.causal_entry_keys or [],
            causal_confidence=self.causal_confidence,
            agent_id=self.agent_id or "",
            committed_at=datetime.now(UTC),
        )


class OutcomeRecordRequest(_Body):
    """A complete ``OutcomeRecord`` (what ``SidecarAdapter`` sends)."""

    record: OutcomeRecord


# -- query strings -------------------------------------------------------------


class _Branched(_Body):
    branch: str | None = Field(default=None, description=BRANCH_RULE)

    _branch = field_validator("branch")(_main_only)


class ReadParams(_Branched):
    version: int | None = Field(default=None, ge=1, description="A historical version.")
    consistent: bool = Field(default=False, description="Bypass the index: LIST + GET on S3.")
    min_confidence: float = Field(default=0.0, ge=0.0, le=1.0)


class EntryParams(ReadParams):
    """``GET /api/v1/entry``: the coordinates in the query, so a key may hold '/'."""

    entity_path: str
    key: str


class HistoryParams(_Body):
    since: datetime | None = Field(default=None, description="Versions written at or after.")
    until: datetime | None = Field(default=None, description="Versions written at or before.")


class HistoryQueryParams(HistoryParams):
    """``GET /api/v1/history``: the coordinates in the query, so a key may hold '/'."""

    entity_path: str
    key: str


MAX_PAGE = 10_000


class ListParams(_Branched):
    entity_path: str | None = Field(default=None, description="Exact entity; omit for all.")
    subtree: bool = Field(default=False, description="Include entities below entity_path.")
    include_superseded: bool = False
    limit: int = Field(default=100, ge=1, le=MAX_PAGE)
    offset: int = Field(default=0, ge=0, description="Skip this many (sorted) entries.")
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


class NotFound(BaseModel):
    """A read of a key with no (visible) current version: 200, as amfs-http-server."""

    status: Literal["not_found"]
    entity_path: str
    key: str


class EntryList(BaseModel):
    entries: list[MemoryEntry]
    total: int = Field(description="Entries matching the filter, over all pages.")
    next_cursor: str | None = Field(default=None, description="Ours: the next page's cursor.")


class History(BaseModel):
    entity_path: str
    key: str
    version_count: int
    versions: list[MemoryEntry] = Field(description="Oldest first; empty for a missing key.")


class SearchResponse(RootModel[list[MemoryEntry]]):
    """A bare JSON list of entries, as amfs-http-server."""


class OutcomeCommitted(BaseModel):
    outcome_ref: str
    outcome_type: str
    affected_entries: int
    entries: list[MemoryEntry] = Field(description="Entries whose evidence changed.")
    outcome: OutcomeRecord = Field(description="Ours: the stored record.")


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
    """amfs-http-server's stats (a superset of ``amfs_core.models.MemoryStats``, over
    current entries, benchmark and system rows left out as upstream), then ours:
    object counts from the index and the sidecar's state."""

    model_config = ConfigDict(extra="allow")  # upstream's extended aggregates ride along

    total_entries: int
    total_entities: int
    total_agents: int
    agents: dict[str, int]
    entities: dict[str, int]
    confidence_avg: float
    confidence_min: float
    confidence_max: float
    outcome_linked_count: int
    oldest_entry_at: datetime | None
    newest_entry_at: datetime | None
    entries: int = Field(description="Ours: current entries in the index (all of them).")
    versions: int
    outcomes: int
    watchers: int
    synced: bool
    conditional_writes_supported: bool | None
    last_poll_success_unix: float | None
    cache: CacheStats


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class ApiHealth(Health):
    """``GET /api/v1/health``, as amfs-http-server's."""

    version: str
    schema_version: str


class Readiness(BaseModel):
    status: Literal["ready", "starting", "unavailable"]
    synced: bool
    bucket_reachable: bool
    detail: str | None = None


ALL_MODELS: tuple[type[BaseModel], ...] = (
    NotFound,
    History,
    ApiHealth,
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
