"""`make bench`: run every benchmark module that exists, in order."""

from __future__ import annotations

import importlib
import sys

MODULES = ["bench.request_counts", "bench.sidecar_bench", "bench.operator_bench"]


def main() -> int:
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                print(f"skip {name}: not present")
                continue
            raise
        print(f"== {name}")
        module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
