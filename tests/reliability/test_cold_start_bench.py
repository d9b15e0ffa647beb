"""bench/cold_start.py at small sizes on moto: what it counts holds (slow: it fills
buckets object by object). Counts only; its timings are the bench's business."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cold_start import Storage, measure_size

pytestmark = pytest.mark.slow


async def test_the_snapshot_start_costs_the_same_at_two_sizes_and_the_listing_does_not(
    s3_endpoint: str, socket_dir: Path,
) -> None:
    storage = Storage("moto", s3_endpoint, "testing", "testing")
    # Pages of 50 keys: both memories outgrow one slice of the holder's rolling scan.
    small = await measure_size(storage, 300, socket_dir, scan_page_size=50)
    large = await measure_size(storage, 1_300, socket_dir, scan_page_size=50)
    old_small, old_large = (f["designs"]["full_listing"] for f in (small, large))
    new_small, new_large = (f["designs"]["snapshot"] for f in (small, large))
    # One more page of entries/ (500 → 1,500 objects) is one more LIST for the old design.
    assert old_large["start_requests"]["ListObjectsV2"] == (
        old_small["start_requests"]["ListObjectsV2"] + 1)
    assert old_large["resync_requests"]["ListObjectsV2"] == (
        old_small["resync_requests"]["ListObjectsV2"] + 1)
    # The snapshot start: the same requests whatever the size (index/, one GET, the journal).
    assert new_small["start_requests"] == new_large["start_requests"]
    assert new_small["resync_requests"] == new_large["resync_requests"]
    assert sum(new_large["resync_requests"].values()) == 2  # one LIST and one GET of index/
    hour_small, hour_large = (f["requests_per_sidecar_hour"] for f in (small, large))
    assert hour_small["without_the_lease"]["snapshot"] == (
        hour_large["without_the_lease"]["snapshot"])
    # The lease holder too: one slice of its rolling scan per interval, at both sizes.
    assert new_small["holder_resync_requests"] == new_large["holder_resync_requests"]
    assert hour_small["the_lease_holder"]["snapshot"] == (
        hour_large["the_lease_holder"]["snapshot"])
