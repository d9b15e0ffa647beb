"""Stream event ids: where a client stands, in a form a resume can act on. Pure.

An id is ``{epoch}-{seq}-{ms}``:

- ``epoch``: 12 hex digits drawn when the sidecar process starts; ``seq``: the
  position in that process's delivery order, 12 digits. Within one epoch ids
  sort as they were delivered, so the sidecar that issued one resumes exactly
  after it from its buffer of recent events.
- ``ms``: a time on the storage's clock before which every journal record had
  been delivered when the event was; a resume anywhere else (another pod, a
  restarted sidecar, an id older than the buffer) replays the journal from
  there, which may repeat events but cannot skip one.

The epoch of zeros marks a journal position without a sequence: what events
replayed from the journal carry. Ids of sidecars before this form were journal
keys; they still resume, from the key's time minus the look-back.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from amfs_s3.layout import Layout

JOURNAL_EPOCH = "0" * 12
_ID = re.compile(r"(?P<epoch>[0-9a-f]{12})-(?P<seq>[0-9]{12})-(?P<ms>[0-9]{13})")


def new_epoch() -> str:
    """A fresh epoch; never the journal one."""
    while (epoch := secrets.token_hex(6)) == JOURNAL_EPOCH:
        pass  # pragma: no cover - one chance in 2**48
    return epoch


@dataclass(frozen=True)
class EventId:
    epoch: str
    seq: int
    ms: int

    def __str__(self) -> str:
        return f"{self.epoch}-{self.seq:012d}-{max(self.ms, 0):013d}"

    @property
    def journal_only(self) -> bool:
        return self.epoch == JOURNAL_EPOCH


def journal_position(ms: int) -> EventId:
    return EventId(JOURNAL_EPOCH, 0, ms)


def parse_event_id(text: str, layout: Layout, lookback_ms: int) -> EventId | None:
    """The position *text* names, or None when it is not an id this memory issues."""
    match = _ID.fullmatch(text)
    if match is not None:
        return EventId(match["epoch"], int(match["seq"]), int(match["ms"]))
    legacy = layout.parse_journal_key(text)
    if legacy is not None:
        # Those ids were delivered out of journal order: the look-back covers it.
        return journal_position(legacy.ms - lookback_ms)
    return None
