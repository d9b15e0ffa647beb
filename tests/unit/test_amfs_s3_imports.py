"""amfs_s3 is the library below the sidecar and the operator: it imports neither,
and its own modules import each other without a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import amfs_s3

PACKAGE = Path(amfs_s3.__file__).parent
FORBIDDEN = ("amfs_sidecar", "amfs_operator")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            # ``from amfs_s3 import config`` imports the submodule amfs_s3.config;
            # ``from amfs_s3 import S3Adapter`` would import the package root.
            if node.module == "amfs_s3":
                found.update(
                    f"amfs_s3.{alias.name}" if (PACKAGE / f"{alias.name}.py").exists()
                    else "amfs_s3"
                    for alias in node.names
                )
            else:
                found.add(node.module)
    return found


def module_name(path: Path) -> str:
    return "amfs_s3" if path.name == "__init__.py" else f"amfs_s3.{path.stem}"


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.glob("*.py")}
    return {
        name: {m for m in imported_modules(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                return [*stack[stack.index(target):], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_amfs_s3_imports_neither_the_sidecar_nor_the_operator() -> None:
    offenders = {
        path.name: sorted(m for m in imported_modules(path) if m.split(".")[0] in FORBIDDEN)
        for path in PACKAGE.glob("*.py")
    }
    assert {name: mods for name, mods in offenders.items() if mods} == {}


def test_amfs_s3_has_no_import_circle() -> None:
    # The package's __init__ re-exports S3Adapter, so edges *into* the package
    # root are the only ones a submodule may not have.
    edges = graph()
    assert all("amfs_s3" not in targets for name, targets in edges.items() if name != "amfs_s3")
    assert find_cycle(edges) is None


def test_the_cycle_finder_finds_a_circle() -> None:
    """Guards the test above from passing vacuously."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_the_adapters_imports() -> None:
    edges = graph()
    assert {"amfs_s3.layout", "amfs_s3.journal", "amfs_s3.known"} <= edges["amfs_s3.adapter"]
