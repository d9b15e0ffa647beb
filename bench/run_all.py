"""`make bench`: run every benchmark module that exists, in order."""

from __future__ import annotations

import importlib
import sys
import traceback

MODULES = [
    "bench.request_counts",
    "bench.adapter_compare",
    "bench.propagation",
    "bench.cold_start",
    "bench.sidecar_bench",
    "bench.sidecar_memory",
    "bench.stream_replay",
    "bench.operator_bench",
]
# Last, and even when a benchmark failed: RESULTS.md from every results file present.
REPORT = "bench.report"


def main() -> int:
    failed: list[str] = []
    for name in [*MODULES, REPORT]:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                print(f"skip {name}: not present")
                continue
            raise
        print(f"== {name}")
        try:
            module.main()
        except Exception:
            # One broken benchmark must not hide the others' fresh figures.
            traceback.print_exc()
            failed.append(name)
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
