"""The cold-start bench's arithmetic (bench.cold_start): per-hour figures and the model."""

from __future__ import annotations

from typing import Any

from bench.cold_start import MODEL_SIZE, mean_calls, model, per_hour, rolling_scan


def measured(entries: int, scan_seconds: float, load_seconds: float) -> dict[str, Any]:
    pages = -(-(entries + 200) // 1000)
    designs = {
        "full_listing": {"start_to_ready_seconds": 1.0 + scan_seconds,
                         "resync_seconds": scan_seconds,
                         "idle_poll_requests": {"ListObjectsV2": 1},
                         "resync_requests": {"ListObjectsV2": pages + 1}},
        "snapshot": {"start_to_ready_seconds": 1.5 + load_seconds,
                     "snapshot_load_seconds": load_seconds,
                     "idle_poll_requests": {"ListObjectsV2": 1},
                     "resync_requests": {"ListObjectsV2": 1, "GetObject": 1},
                     # One slice of the rolling scan: 5 pages of entries/, whatever the size.
                     "holder_resync_requests": {"ListObjectsV2": 5 + 3, "GetObject": 1,
                                                "PutObject": 2, "DeleteObjects": 1}},
    }
    return {"entries": entries, "objects_in_entries": entries + 200, "designs": designs,
            "requests_per_sidecar_hour": per_hour(designs)}


def test_a_sidecar_without_the_lease_pays_the_same_at_every_size() -> None:
    small, large = measured(10_000, 0.5, 0.01), measured(100_000, 5.0, 0.1)
    for f in (small, large):
        hour = f["requests_per_sidecar_hour"]
        # 720 polls of 1 request, 12 looks at index/ of 2.
        assert hour["without_the_lease"]["snapshot"] == 720 + 12 * 2
        assert hour["1_sidecars"]["snapshot"] == hour["the_lease_holder"]["snapshot"]
        assert hour["100_sidecars"]["snapshot"] < hour["10_sidecars"]["snapshot"]
    # The old design grows with the memory: 12 scans of every page.
    assert large["requests_per_sidecar_hour"]["1_sidecars"]["full_listing"] == 720 + 12 * 102


def test_the_model_extrapolates_per_page_and_per_entry_costs() -> None:
    result = model([measured(10_000, 0.5, 0.01), measured(100_000, 5.0, 0.1)])
    costs = result["costs"]
    assert costs["full_listing_seconds_per_list_page"] == round(5.0 / 101, 4)
    assert costs["snapshot_microseconds_per_entry"] == 1.0
    start = result["start_to_ready_seconds"]
    assert start["snapshot"] == round(1.5 + MODEL_SIZE * 1e-6, 1)
    assert start["full_listing"] == round(1.0 + 1000 * 5.0 / 101, 1)
    assert result["goal_met"] is True
    assert result["requests_per_sidecar_hour"]["without_the_lease"]["snapshot"] == 744
    assert result["assumptions"]


def test_the_lease_holder_pays_the_same_at_every_size_and_in_the_model() -> None:
    small, large = measured(10_000, 0.5, 0.01), measured(100_000, 5.0, 0.1)
    holder = {f["entries"]: f["requests_per_sidecar_hour"]["the_lease_holder"]["snapshot"]
              for f in (small, large)}
    result = model([small, large])
    # 720 polls of 1 request, 12 intervals of 12 (8 LISTs, a GET, 2 PUTs, a delete).
    assert holder == {10_000: 720 + 12 * 12, 100_000: 720 + 12 * 12}
    assert result["requests_per_sidecar_hour"]["the_lease_holder"]["snapshot"] == 720 + 12 * 12
    assert result["requests_per_sidecar_hour"]["the_lease_holder"]["full_listing"] > 12_000


def test_the_rolling_scans_cycle_and_the_mean_of_its_intervals() -> None:
    assert rolling_scan(1_000_000) == {"entries_pages_per_interval": 5, "page_size": 1000,
                                       "cycle_intervals": 200,
                                       "worst_case_detection_hours": 16.67}
    assert rolling_scan(300)["cycle_intervals"] == 1
    assert mean_calls([{"ListObjectsV2": 8}, {"ListObjectsV2": 7, "PutObject": 3}]) == {
        "ListObjectsV2": 7.5, "PutObject": 1.5}
