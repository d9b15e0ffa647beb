"""Many writers on one key: every acknowledged update is a distinct version."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from amfs_core.exceptions import VersionConflictError

from amfs_s3 import S3Adapter
from amfs_s3.config import S3Settings
from tests.integration.test_adapter import make_entry


def test_eight_adapters_times_ten_updates_keep_eighty_versions(s3_settings: S3Settings) -> None:
    writers, updates = 8, 10
    adapters = [
        S3Adapter.from_settings(s3_settings, writer_id=f"writer-{n}") for n in range(writers)
    ]
    start = threading.Barrier(writers)

    def run(n: int) -> list[int]:
        start.wait()
        return [
            adapters[n].write(make_entry("svc", "hot", {"writer": n, "update": u})).version
            for u in range(updates)
        ]

    with ThreadPoolExecutor(writers) as pool:
        results = list(pool.map(run, range(writers)))
    acknowledged = [v for versions in results for v in versions]
    assert sorted(acknowledged) == list(range(1, writers * updates + 1))

    reader = adapters[0]
    history = reader.history("svc", "hot")
    assert len(history) == writers * updates
    # Each acknowledged write is stored at the version it was acknowledged with.
    by_version = {e.version: e.value for e in history}
    for n, versions in enumerate(results):
        assert [by_version[v] for v in versions] == [{"writer": n, "update": u} for u in range(10)]
    current = reader.read("svc", "hot")
    assert current is not None and current.version == writers * updates
    for adapter in adapters:
        adapter.close()


def test_racing_writers_that_state_a_version_get_exactly_one_winner(
    s3_settings: S3Settings,
) -> None:
    setup = S3Adapter.from_settings(s3_settings)
    setup.write(make_entry("svc", "cas", "base"))
    contenders = [S3Adapter.from_settings(s3_settings) for _ in range(6)]
    start = threading.Barrier(len(contenders))

    def attempt(n: int) -> str:
        start.wait()
        try:
            contenders[n].write(make_entry("svc", "cas", f"from-{n}", version=2))
            return "won"
        except VersionConflictError:
            return "conflict"

    with ThreadPoolExecutor(len(contenders)) as pool:
        outcomes = list(pool.map(attempt, range(len(contenders))))
    assert outcomes.count("won") == 1
    assert outcomes.count("conflict") == len(contenders) - 1
    assert setup.current_version("svc", "cas") == 2
    for adapter in [setup, *contenders]:
        adapter.close()
