"""bench/sidecar_memory.py at a small size: a sidecar process really starts from the
snapshot the bench writes (it counts every entry of it), and the lease holder's
snapshot, built by the sidecar's own code, holds the same entries. Memory figures are
the bench's business; here only what could break the bench."""

from __future__ import annotations

from pathlib import Path

from bench import sidecar_memory
from bench.common import moto_process

SIZE = 2_000


def test_a_sidecar_starts_from_the_benchs_snapshot_and_counts_every_entry(
        tmp_path: Path) -> None:
    with moto_process() as endpoint:
        row = sidecar_memory.cold_start(endpoint, SIZE, tmp_path)  # raises on a wrong count
    assert row["peak_rss_mib"] >= row["rss_ready_mib"] > 0
    assert row["snapshot_bytes"] > 0


def test_the_holders_snapshot_holds_every_entry_it_was_given() -> None:
    row = sidecar_memory.holder_child(SIZE)
    assert row["entries_in_snapshot"] == SIZE
    assert row["peak_rss_writing_snapshot_mib"] >= row["rss_index_mib"] > 0
    assert row["added_writing_snapshot_mib"] >= 0


def test_per_entry_slopes_come_from_the_smallest_and_largest_sizes() -> None:
    def row(ready: float, peak: float, holder: float) -> dict[str, dict[str, float]]:
        return {"cold_start": {"rss_ready_mib": ready, "peak_rss_mib": peak},
                "lease_holder": {"added_writing_snapshot_mib": holder}}

    rows = {"1000": row(80, 80, 80), "1049576": row(1080, 2080, 3080)}
    # 1,048,576 more entries: 1,000 MiB more is 1,000 bytes an entry.
    assert sidecar_memory.per_entry(rows) == {"ready": 1000, "cold_start_peak": 2000,
                                              "lease_holder_added": 3000}
    assert sidecar_memory.per_entry({"1000": rows["1000"]}) == {}
