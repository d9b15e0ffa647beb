"""The sidecar process's resident memory, read from ``/proc`` at scrape time.

The index holds every (entity, key) of the memory, so a sidecar's memory grows with
the memory it serves (about 0.5 KiB an entry); beside its container's limit
(``amfs_sidecar_memory_limit_bytes``) this tells an operator to raise the limit
before the kernel kills the sidecar.
"""

from __future__ import annotations

import os
from pathlib import Path

STATM = Path("/proc/self/statm")


def resident_bytes(statm: Path = STATM) -> int:
    """Resident set size: ``statm``'s second field, in pages."""
    return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
