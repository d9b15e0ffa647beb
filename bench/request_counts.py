"""How many S3 requests one update, one read and one list of 200 entries cost.

    .venv/bin/python -m bench.request_counts
"""

from __future__ import annotations

from datetime import UTC, datetime

from amfs_core.models import MemoryEntry, Provenance

from amfs_s3 import S3Adapter
from bench.common import RequestCounter, moto_server, new_bucket, write_result

COMMAND = ".venv/bin/python -m bench.request_counts"


def entry(entity_path: str, key: str, value: object) -> MemoryEntry:
    return MemoryEntry(
        entity_path=entity_path, key=key, value=value,
        provenance=Provenance(agent_id="bench", session_id="s", written_at=datetime.now(UTC)),
    )


def main() -> dict[str, dict[str, int]]:
    with moto_server() as endpoint:
        bucket = new_bucket(endpoint)
        counter = RequestCounter()
        adapter = S3Adapter(bucket, endpoint_url=endpoint, request_observer=counter)
        _ = adapter.conditional_writes_supported  # the one-time start-up probe
        figures = {"startup_probe": counter.take()}
        # Journal records go out in the background: drained before each count.
        adapter.write(entry("svc", "cfg", 1))
        adapter.drain_journal()
        figures["new_key"] = counter.take()
        adapter.write(entry("svc", "cfg", 2))
        adapter.drain_journal()
        figures["update"] = counter.take()
        adapter.read("svc", "cfg")
        figures["read_of_a_version_held"] = counter.take()
        # Other processes, which have seen neither the key nor its bytes.
        other, reader = (S3Adapter(bucket, endpoint_url=endpoint, request_observer=counter)
                         for _ in range(2))
        _ = other.conditional_writes_supported, reader.conditional_writes_supported
        counter.take()
        other.write(entry("svc", "cfg", 3))
        other.drain_journal()
        figures["update_of_a_key_not_seen"] = counter.take()
        reader.read("svc", "cfg")
        figures["read"] = counter.take()
        for n in range(200):
            adapter.write(entry("list200", f"k{n:03d}", n))
        adapter.drain_journal()
        counter.take()
        assert len(reader.list("list200")) == 200
        figures["list_200"] = counter.take()
        assert len(reader.list("list200")) == 200
        figures["list_200_again"] = counter.take()
        reader.close()
        other.close()
        adapter.close()
    write_result("request_counts", figures, COMMAND)
    for name, calls in figures.items():
        print(f"{name:>14}: {sum(calls.values()):>4} requests  {calls}")
    return figures


if __name__ == "__main__":
    main()
