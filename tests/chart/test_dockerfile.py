"""The Dockerfile, read as text (no Docker engine here): what can be checked without a build."""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.chart.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
BUILD_TOOLS = re.compile(r"\b(apt-get install|apt install|apk add|gcc|g\+\+|make|build-essential|"
                         r"pip install|pip3 install|uv pip|poetry|cargo|rustc)\b")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def stages() -> list[Stage]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            found.append(Stage(parts[0], name))
        elif found:
            found[-1].instructions.append((keyword, args.strip()))
    return found


def build_args() -> dict[str, str]:
    pairs = re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    return dict(pairs)


def copies(stage: Stage) -> list[tuple[list[str], list[str], str]]:
    """(flags, sources, destination) of each COPY."""
    result = []
    for args in stage.all("COPY"):
        words = shlex.split(args)
        flags = [w for w in words if w.startswith("--")]
        paths = [w for w in words if not w.startswith("--")]
        result.append((flags, paths[:-1], paths[-1]))
    return result


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or a parent decides."""
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        regex = re.escape(body).replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(
            r"\?", "[^/]")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def final() -> Stage:
    return stages()[-1]


# ---- structure ------------------------------------------------------------------------------


def test_multi_stage_on_a_slim_python_base() -> None:
    found = stages()
    assert len(found) >= 2
    assert found[0].name == "build"
    base = final().base.replace("${PYTHON_IMAGE}", build_args()["PYTHON_IMAGE"])
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", base), base
    assert {s.base for s in found} == {"${PYTHON_IMAGE}"}  # one base, one Python


def test_the_final_stage_runs_as_a_numeric_non_root_user() -> None:
    [user] = final().all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    # The injector adds the image's group to agent pods for the socket.
    from amfs_operator.injection import SIDECAR_GID, SIDECAR_UID

    assert (int(uid), int(gid)) == (SIDECAR_UID, SIDECAR_GID)


def test_the_final_stage_has_no_build_tools() -> None:
    for run in final().all("RUN"):
        assert not BUILD_TOOLS.search(run), f"build tooling in the final stage: {run}"
    assert any("pip uninstall" in run for run in final().all("RUN"))
    # The virtualenv from the build stage leaves pip behind as well.
    build = stages()[0]
    assert any("pip uninstall" in run and "/opt/amfs/bin/python" in run for run in build.all("RUN"))


def test_copied_sources_exist_and_reach_the_build_context() -> None:
    names = {s.name for s in stages() if s.name}
    checked = 0
    for stage in stages():
        for flags, sources, _ in copies(stage):
            if any(f.startswith("--from=") for f in flags):
                assert flags[0].removeprefix("--from=") in names
                continue
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such file in the repo"
                assert not dockerignore_excludes(source), f"COPY {source}: .dockerignore drops it"
                checked += 1
    assert checked >= 4


def test_dockerignore_keeps_the_context_small() -> None:
    for path in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "charts/amfs/Chart.yaml",
                 "deploy/01-crd.yaml", "bench/results", ".run/amfs.sock",
                 "sidecar/amfs_sidecar/__pycache__/cli.cpython-311.pyc"):
        assert dockerignore_excludes(path), path
    for path in ("pyproject.toml", "sidecar/amfs_sidecar/cli.py", "operator/amfs_operator/cli.py",
                 "docker/entrypoint.sh"):
        assert not dockerignore_excludes(path), path


# ---- the entry point ------------------------------------------------------------------------


def test_the_entrypoint_is_the_dispatch_script() -> None:
    [entrypoint] = final().all("ENTRYPOINT")
    assert json.loads(entrypoint) == ["/app/entrypoint.sh"]
    [copy] = [c for c in copies(final()) if c[2] == "/app/entrypoint.sh"]
    assert copy[1] == ["docker/entrypoint.sh"] and "--chmod=0755" in copy[0]
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")


def test_the_programs_it_runs_are_console_scripts_of_the_project() -> None:
    programs = set(re.findall(r"exec (amfs-[a-z]+) ", ENTRYPOINT.read_text()))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]

    assert programs == {"amfs-sidecar", "amfs-operator"}
    for program in programs:
        module, _, function = scripts[program].partition(":")
        assert callable(getattr(importlib.import_module(module), function))


@pytest.mark.parametrize("program", ["amfs-sidecar", "amfs-operator"])
def test_each_console_script_target_starts(program: str) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts[program].partition(":")
    code = f"import sys; from {module} import {function}; sys.argv[0] = {program!r}; {function}()"
    done = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": _pythonpath()})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {program}")


def _pythonpath() -> str:
    paths = [str(ROOT / "sidecar"), str(ROOT / "operator"), os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(p for p in paths if p)


@pytest.fixture
def stub_programs(tmp_path: Path) -> Path:
    """amfs-sidecar and amfs-operator stand-ins that print who ran and with what."""
    for program in ("amfs-sidecar", "amfs-operator"):
        stub = tmp_path / program
        stub.write_text(f'#!/bin/sh\nprintf "%s\\n" {program} "$@"\n')
        stub.chmod(0o755)
    return tmp_path


def run_entrypoint(stubs: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", str(ENTRYPOINT), *args], capture_output=True, text=True,
                          timeout=30, env={"PATH": f"{stubs}:/usr/bin:/bin"})


@pytest.mark.parametrize(("program", "binary"), [("sidecar", "amfs-sidecar"),
                                                  ("operator", "amfs-operator")])
def test_the_first_argument_picks_the_program_and_the_rest_pass_through(
    stub_programs: Path, program: str, binary: str
) -> None:
    done = run_entrypoint(stub_programs, program, "--config", "/etc/amfs/config/amfs.yaml",
                          "a value with spaces")

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [binary, "--config", "/etc/amfs/config/amfs.yaml",
                                        "a value with spaces"]


@pytest.mark.parametrize("args", [(), ("shell",), ("--namespace", "x")])
def test_anything_else_is_a_usage_error(stub_programs: Path, args: tuple[str, ...]) -> None:
    done = run_entrypoint(stub_programs, *args)

    assert done.returncode == 64
    assert done.stdout == ""
    assert "usage: entrypoint.sh sidecar|operator [ARGS...]" in done.stderr
