"""Render deploy/ from the Helm chart (``make manifests``).

    python scripts/render_manifests.py deploy/           # write deploy/*.yaml
    python scripts/render_manifests.py --check deploy/   # exit 1 if deploy/ drifted

The chart is the one source: this renders it with Helm's own engine
(helm-python-sdk, no helm binary) for release ``amfs`` in namespace
``amfs-system``, adds the Namespace and the CRD from ``crds/``, and writes one
file per concern so ``kubectl apply -f deploy/`` applies them in order.
deploy/examples/ is not touched.

The values are the chart's defaults except :data:`DEPLOY_VALUES`: the webhook's
certificate comes from the operator (``webhook.certificate.source: operator``),
which issues it at start-up in each cluster. So deploy/ holds no private key,
everyone who applies it gets their own, and rendering is reproducible.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import helm_python
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "amfs"
RELEASE = "amfs"
NAMESPACE = "amfs-system"
HEADER = (
    "# Rendered from charts/amfs by scripts/render_manifests.py (default values,\n"
    "# webhook.certificate.source=operator). Do not edit: change the chart and run\n"
    "# `make manifests`.\n"
)
# The webhook certificate is issued by the operator in the cluster, never rendered.
DEPLOY_VALUES: dict[str, Any] = {"webhook": {"certificate": {"source": "operator"}}}
NAMESPACE_FILE = "00-namespace.yaml"
CRD_FILE = "01-crd.yaml"
WEBHOOK_FILE = "04-webhook.yaml"
# Which chart template goes to which file; a template missing here is an error, so a
# new template cannot silently stay out of deploy/.
FILES: dict[str, str] = {
    "serviceaccount.yaml": "02-rbac.yaml",
    "rbac.yaml": "02-rbac.yaml",
    "deployment.yaml": "03-operator.yaml",
    "services.yaml": "03-operator.yaml",
    "webhook.yaml": WEBHOOK_FILE,
    "dashboards.yaml": "05-dashboards.yaml",
    # Off by default; they render nothing unless enabled.
    "servicemonitor.yaml": "06-monitoring.yaml",
    "podmonitor.yaml": "06-monitoring.yaml",
    "prometheusrule.yaml": "06-monitoring.yaml",
}


class RenderError(Exception):
    """The chart cannot be rendered into manifests; the message says why."""


def render_chart(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    chart_dir: Path = CHART,
) -> dict[str, str]:
    """Helm's rendering of every template: ``{"amfs/templates/x.yaml": text}``."""
    with helm_python.Chart.load(chart_dir) as chart:
        return chart.render(
            dict(values) if values is not None else None,
            name=release, namespace=namespace, is_install=True,
        )


def chart_crds(chart_dir: Path = CHART) -> list[str]:
    with helm_python.Chart.load(chart_dir) as chart:
        return [crd["data"] for crd in sorted(chart.crds, key=lambda c: c["filename"])]


def manifest_files(
    rendered: Mapping[str, str], crds: Iterable[str], *, namespace: str = NAMESPACE
) -> dict[str, str]:
    """Group rendered templates into deploy/'s files (NOTES.txt and partials left out)."""
    documents: dict[str, list[str]] = {NAMESPACE_FILE: [_namespace(namespace)]}
    documents[CRD_FILE] = [crd.strip() for crd in crds]
    for path, text in sorted(rendered.items()):
        template = path.split("/templates/", 1)[-1]
        if template == "NOTES.txt" or template.startswith("_"):
            continue
        if template not in FILES:
            raise RenderError(
                f"template {template} has no file in deploy/: "
                f"add it to FILES in {Path(__file__).name}"
            )
        docs = [doc.strip() for doc in text.split("\n---") if _has_object(doc)]
        if docs:
            documents.setdefault(FILES[template], []).extend(docs)
    return {name: HEADER + "---\n" + "\n---\n".join(docs) + "\n"
            for name, docs in sorted(documents.items()) if docs}


def render() -> dict[str, str]:
    """The files deploy/ should hold."""
    return manifest_files(render_chart(DEPLOY_VALUES), chart_crds())


# ---- writing and checking ------------------------------------------------------------------


def write(directory: Path, files: Mapping[str, str]) -> list[str]:
    """Write *files*, remove rendered files that are no longer produced; returns changes."""
    directory.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, text in files.items():
        path = directory / name
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            changed.append(name)
    for stale in set(_rendered_files(directory)) - set(files):
        (directory / stale).unlink()
        changed.append(stale)
    return sorted(changed)


def drift(directory: Path, files: Mapping[str, str]) -> list[str]:
    """Unified diffs between *directory* and *files* (empty when they match)."""
    diffs = []
    for name in sorted(set(files) | set(_rendered_files(directory))):
        path = directory / name
        current = path.read_text() if path.is_file() else ""
        wanted = files.get(name, "")
        if current != wanted:
            diffs.append("".join(difflib.unified_diff(
                current.splitlines(keepends=True), wanted.splitlines(keepends=True),
                f"{directory.name}/{name} (on disk)", f"{directory.name}/{name} (rendered)",
            )) or f"{name}: differs")
    return diffs


def _rendered_files(directory: Path) -> list[str]:
    if not directory.is_dir():
        return []
    return [p.name for p in directory.glob("*.yaml") if p.read_text().startswith(HEADER)]


def _namespace(namespace: str) -> str:
    return yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": namespace,
            "labels": {"app.kubernetes.io/name": "amfs", "app.kubernetes.io/part-of": "amfs"},
        },
    }, sort_keys=False).strip()


def _has_object(doc: str) -> bool:
    return any(line.strip() and not line.lstrip().startswith("#") for line in doc.splitlines())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="where the manifests go, e.g. deploy/")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the directory differs from the chart")
    args = parser.parse_args(argv)
    try:
        files = render()
    except (RenderError, helm_python.HelmError) as exc:
        print(f"render_manifests: {exc}", file=sys.stderr)
        return 2
    if args.check:
        diffs = drift(args.directory, files)
        for diff in diffs:
            print(diff, file=sys.stderr)
        if diffs:
            print(f"{args.directory} differs from charts/amfs: run `make manifests`",
                  file=sys.stderr)
        return 1 if diffs else 0
    for name in write(args.directory, files):
        print(f"wrote {args.directory / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
