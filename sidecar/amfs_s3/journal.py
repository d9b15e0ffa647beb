"""The journal: change records and where a poller stands in them. Pure, no I/O.

Every write PUTs a small journal record after its version object. A poller
lists ``journal/`` with ``StartAfter`` = (newest key seen minus a look-back window),
so one poll is about one LIST whatever the number of entries; the look-back
absorbs clock skew between writers and LIST staleness, and the cursor's memory
of recently seen keys keeps the overlap from delivering anything twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from amfs_s3.layout import Layout

DEFAULT_LOOKBACK_MS = 30_000
# A record stamped further ahead of the storage's clock than this comes from a
# writer whose clock (or estimate of the storage's) is wrong: it is reported.
FUTURE_TOLERANCE_MS = 5_000


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Change:
    """One journal record: a version written or an outcome committed."""

    journal_key: str
    kind: str  # "write" | "outcome"
    written_at_ms: int
    writer: str
    entity_path: str | None = None
    key: str | None = None
    version: int | None = None
    outcome_ref: str | None = None

    def to_record(self) -> dict[str, Any]:
        """The JSON body stored at ``journal_key``."""
        record: dict[str, Any] = {"kind": self.kind, "written_at_ms": self.written_at_ms}
        record["writer"] = self.writer
        if self.kind == "write":
            record.update(entity_path=self.entity_path, key=self.key, version=self.version)
        else:
            record["outcome_ref"] = self.outcome_ref
        return record

    @classmethod
    def from_record(cls, journal_key: str, record: dict[str, Any]) -> Change:
        kind = record.get("kind")
        if kind not in {"write", "outcome"}:
            raise ValueError(f"journal record {journal_key} has unknown kind {kind!r}")
        return cls(
            journal_key=journal_key,
            kind=kind,
            written_at_ms=int(record["written_at_ms"]),
            writer=str(record.get("writer", "")),
            entity_path=record.get("entity_path"),
            key=record.get("key"),
            version=record.get("version"),
            outcome_ref=record.get("outcome_ref"),
        )


@dataclass
class JournalCursor:
    """Where a poller stands in the journal. Pure: no I/O, clock passed in.

    ``seen`` holds the keys delivered within the look-back window so a
    re-listed overlap is never delivered twice; older keys are forgotten.
    ``clock`` is the storage's time in ms: the high-water mark never moves past
    it, so a record from a writer whose clock runs ahead cannot drag the
    listing past everybody else's records; that record stays in ``seen``
    until the clock catches up with it, so it is delivered once.
    """

    layout: Layout
    lookback_ms: int = DEFAULT_LOOKBACK_MS
    high_water_ms: int = 0
    seen: dict[str, int] = field(default_factory=dict)
    resume_key: str | None = None
    clock: Callable[[], int] = wall_clock_ms
    # The pending keys the last listing found: until each is confirmed, a
    # stream's resume point must not pass it (amfs_sidecar.replay).
    listed: list[str] = field(default_factory=list)

    @classmethod
    def starting_now(
        cls,
        layout: Layout,
        now_ms: int,
        lookback_ms: int = DEFAULT_LOOKBACK_MS,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> JournalCursor:
        """A cursor that ignores history: only changes from now on."""
        return cls(layout=layout, lookback_ms=lookback_ms, high_water_ms=now_ms, clock=clock)

    @classmethod
    def resuming_after(
        cls,
        layout: Layout,
        journal_key: str,
        lookback_ms: int = DEFAULT_LOOKBACK_MS,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> JournalCursor:
        """A cursor for a client that last saw *journal_key* (SSE Last-Event-ID).

        Everything at or before that key counts as seen; keys inside the
        look-back window that sort after it are still delivered.
        """
        name = layout.parse_journal_key(journal_key)
        if name is None:
            raise ValueError(f"not a journal key of this memory: {journal_key!r}")
        return cls(
            layout=layout,
            lookback_ms=lookback_ms,
            high_water_ms=min(name.ms, clock()),
            resume_key=journal_key,
            clock=clock,
        )

    def start_after(self) -> str:
        if self.high_water_ms == 0:
            return self.layout.journal_root
        return self.layout.journal_start_after(self.high_water_ms - self.lookback_ms)

    def pending(self, keys: list[str]) -> list[str]:
        """The keys not yet confirmed, in journal order (kept as :attr:`listed`)."""
        self.listed = [
            key for key in sorted(keys)
            if key not in self.seen
            and self.layout.parse_journal_key(key) is not None
            and (self.resume_key is None or key > self.resume_key)
        ]
        return list(self.listed)

    def first_unconfirmed_ms(self) -> int | None:
        """The time of the first key the last listing found that is still not
        confirmed (not read, not handled, or beyond what one poll takes)."""
        for key in self.listed:
            if key not in self.seen:
                name = self.layout.parse_journal_key(key)
                return name.ms if name is not None else None
        return None

    def confirm(self, journal_key: str) -> None:
        """*journal_key* was handled: never deliver it again, and move the window on.

        Only handled keys advance the high-water mark, so a record that could
        not be handled is listed again by the next poll.
        """
        name = self.layout.parse_journal_key(journal_key)
        if name is None:
            return
        self.seen[journal_key] = name.ms
        self.high_water_ms = max(self.high_water_ms, min(name.ms, self.clock()))
        self._forget_old()

    def accept(self, keys: list[str]) -> list[str]:
        """Pending keys, confirmed at once (for callers that cannot fail afterwards)."""
        fresh = self.pending(keys)
        for key in fresh:
            self.confirm(key)
        return fresh

    def is_from_the_future(self, journal_key: str) -> bool:
        """Whether *journal_key* claims a time well ahead of the storage's clock."""
        name = self.layout.parse_journal_key(journal_key)
        return name is not None and name.ms > self.clock() + FUTURE_TOLERANCE_MS

    def mark_seen(self, journal_key: str) -> None:
        """Record a change this process made itself, so polling never echoes it."""
        name = self.layout.parse_journal_key(journal_key)
        if name is not None:
            self.seen[journal_key] = name.ms

    def _forget_old(self) -> None:
        horizon = self.high_water_ms - 2 * self.lookback_ms
        for key in [k for k, ms in self.seen.items() if ms < horizon]:
            del self.seen[key]
