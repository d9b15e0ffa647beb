"""deploy/ is the chart rendered with default values, and stays so."""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from scripts import render_manifests as rm
from tests.chart.conftest import DEPLOY


def deploy_objects() -> list[dict[str, Any]]:
    return [doc for path in sorted(DEPLOY.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_deploy_matches_a_fresh_render_of_the_chart() -> None:
    diffs = rm.drift(DEPLOY, rm.render(DEPLOY))
    assert not diffs, "deploy/ differs from charts/amfs; run `make manifests`:\n" + \
        "\n".join(diffs)[:4000]


def test_deploy_holds_the_crd_rbac_operator_and_webhook_in_apply_order() -> None:
    files = sorted(p.name for p in DEPLOY.glob("*.yaml"))
    assert files == ["00-namespace.yaml", "01-crd.yaml", "02-rbac.yaml", "03-operator.yaml",
                     "04-webhook.yaml", "05-dashboards.yaml"]
    kinds = [doc["kind"] for doc in deploy_objects()]
    assert kinds.index("Namespace") < kinds.index("CustomResourceDefinition") < \
        kinds.index("ServiceAccount") < kinds.index("Deployment")
    assert {"ClusterRole", "ClusterRoleBinding", "Service", "Secret",
            "MutatingWebhookConfiguration"} <= set(kinds)
    for doc in deploy_objects():
        if doc["kind"] not in {"Namespace", "CustomResourceDefinition", "ClusterRole",
                               "ClusterRoleBinding", "MutatingWebhookConfiguration"}:
            assert doc["metadata"]["namespace"] == rm.NAMESPACE


def test_the_crd_in_deploy_is_the_charts(crd: dict[str, Any]) -> None:
    [copy] = [doc for doc in deploy_objects() if doc["kind"] == "CustomResourceDefinition"]
    assert copy == crd


@pytest.mark.parametrize("version", ["1.29", kubernetes_validate.latest_version()])
def test_every_object_in_deploy_is_valid(version: str) -> None:
    for doc in deploy_objects():
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_webhook_certificate_in_deploy_serves_the_webhook_service() -> None:
    tls = rm.webhook_tls((DEPLOY / rm.WEBHOOK_FILE).read_text())
    assert rm.certificate_problems(tls) == []


# ---- the renderer -----------------------------------------------------------------------------


@pytest.fixture
def rendered_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "deploy"
    assert rm.main([str(directory)]) == 0
    return directory


def test_check_mode_passes_after_rendering_and_fails_on_a_hand_edit(rendered_dir: Path) -> None:
    assert rm.main(["--check", str(rendered_dir)]) == 0

    operator = rendered_dir / "03-operator.yaml"
    operator.write_text(operator.read_text().replace("replicas: 1", "replicas: 3"))
    assert rm.main(["--check", str(rendered_dir)]) == 1
    (rendered_dir / "02-rbac.yaml").unlink()
    assert any("02-rbac.yaml" in d for d in rm.drift(rendered_dir, rm.render(rendered_dir)))

    assert rm.main([str(rendered_dir)]) == 0
    assert rm.main(["--check", str(rendered_dir)]) == 0


def test_re_rendering_keeps_a_valid_certificate_and_rotating_replaces_it(
    rendered_dir: Path,
) -> None:
    before = (rendered_dir / rm.WEBHOOK_FILE).read_text()

    assert rm.render(rendered_dir)[rm.WEBHOOK_FILE] == before

    rotated = rm.render(rendered_dir, rotate_certificate=True)[rm.WEBHOOK_FILE]
    assert rotated != before
    assert rm.certificate_problems(rm.webhook_tls(rotated)) == []


def test_a_certificate_close_to_expiry_or_for_another_service_is_replaced(
    rendered_dir: Path,
) -> None:
    text = (rendered_dir / rm.WEBHOOK_FILE).read_text()
    tls = rm.webhook_tls(text)
    in_ten_years = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3650)
    assert any("expires" in p for p in rm.certificate_problems(tls, now=in_ten_years))

    other_service = text.replace("amfs-webhook", "other-webhook")
    assert rm.reuse_certificate(text, other_service) == text  # not reused
    fresh = rm.render(rendered_dir, rotate_certificate=True)[rm.WEBHOOK_FILE]
    assert rm.reuse_certificate(fresh, text) == text  # still valid: reused


def test_a_template_without_a_place_in_deploy_is_an_error() -> None:
    with pytest.raises(rm.RenderError, match=r"template extra\.yaml has no file in deploy/"):
        rm.manifest_files({"amfs/templates/extra.yaml": "kind: ConfigMap\n"}, [])


def test_examples_are_left_alone_and_stale_rendered_files_removed(rendered_dir: Path) -> None:
    examples = rendered_dir / "examples"
    shutil.copytree(DEPLOY / "examples", examples)
    stale = rendered_dir / "07-old.yaml"
    stale.write_text(rm.HEADER + "---\n{}\n")
    own = rendered_dir / "README.yaml"
    own.write_text("# mine\n")

    changed = rm.write(rendered_dir, rm.render(rendered_dir))

    assert changed == ["07-old.yaml"] and not stale.exists()
    assert own.exists() and sorted(p.name for p in examples.iterdir()) == sorted(
        p.name for p in (DEPLOY / "examples").iterdir())
