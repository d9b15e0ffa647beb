"""The upstream adapter's own virtualenv, ``.venv-upstream``.

``amfs-adapter-s3`` and this project both provide the import name ``amfs_s3``,
so installing both in one environment would leave whichever came last. The
benchmark therefore runs upstream with its own interpreter:

    .venv/bin/python -m bench.upstream_venv      # create or reuse; prints its python
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv-upstream"
UPSTREAM = "amfs-adapter-s3==0.1.17"
STAMP = VENV / f".installed-{UPSTREAM}"


def python() -> Path:
    return VENV / "bin" / "python"


def ensure() -> Path:
    """Create ``.venv-upstream`` with the upstream adapter unless it is there already."""
    if STAMP.exists() and python().exists():
        return python()
    if not python().exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    subprocess.run([str(python()), "-m", "pip", "install", "--quiet", UPSTREAM], check=True)
    found = subprocess.run(
        [str(python()), "-c", "import amfs_s3.adapter as a; print(a.__file__)"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    if str(REPO / "sidecar") in found:
        raise RuntimeError(f"{VENV} imports this project's amfs_s3 ({found}), not upstream's")
    STAMP.touch()
    return python()


if __name__ == "__main__":
    print(ensure())
    sys.exit(0)
