"""deploy/ is the chart rendered with default values (the webhook certificate issued by the
operator), and stays so."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from amfs_operator.cli import parse_args
from scripts import render_manifests as rm
from tests.chart.conftest import DEPLOY, find


def deploy_objects() -> list[dict[str, Any]]:
    return [doc for path in sorted(DEPLOY.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_deploy_matches_a_fresh_render_of_the_chart() -> None:
    diffs = rm.drift(DEPLOY, rm.render())
    assert not diffs, "deploy/ differs from charts/amfs; run `make manifests`:\n" + \
        "\n".join(diffs)[:4000]


def test_deploy_holds_the_crd_rbac_operator_and_webhook_in_apply_order() -> None:
    files = sorted(p.name for p in DEPLOY.glob("*.yaml"))
    assert files == ["00-namespace.yaml", "01-crd.yaml", "02-rbac.yaml", "03-operator.yaml",
                     "04-webhook.yaml", "05-dashboards.yaml"]
    kinds = [doc["kind"] for doc in deploy_objects()]
    assert kinds.index("Namespace") < kinds.index("CustomResourceDefinition") < \
        kinds.index("ServiceAccount") < kinds.index("Deployment")
    assert {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service",
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


def test_no_file_in_deploy_holds_a_private_key() -> None:
    rendered = sorted(DEPLOY.rglob("*.yaml"))
    assert len(rendered) > 6  # deploy/ and deploy/examples/
    for path in rendered:
        assert "PRIVATE KEY" not in path.read_text(), path
    assert not [doc for doc in deploy_objects() if doc["kind"] == "Secret"]


def test_the_operator_in_deploy_issues_the_webhook_certificate() -> None:
    docs = deploy_objects()
    [container] = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    config = parse_args(container["args"][1:])
    [hook] = find(docs, "MutatingWebhookConfiguration")["webhooks"]

    assert config.webhook_cert_source == "self-signed"
    assert config.webhook_config_name == \
        find(docs, "MutatingWebhookConfiguration")["metadata"]["name"]
    assert (config.webhook_service, config.webhook_namespace) == (
        hook["clientConfig"]["service"]["name"], hook["clientConfig"]["service"]["namespace"])
    assert "caBundle" not in hook["clientConfig"]


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
    assert any("02-rbac.yaml" in d for d in rm.drift(rendered_dir, rm.render()))

    assert rm.main([str(rendered_dir)]) == 0
    assert rm.main(["--check", str(rendered_dir)]) == 0


def test_rendering_is_reproducible(rendered_dir: Path) -> None:
    # Nothing is generated at random any more: no certificate to carry over.
    assert rm.render() == {p.name: p.read_text() for p in rendered_dir.glob("*.yaml")}


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

    changed = rm.write(rendered_dir, rm.render())

    assert changed == ["07-old.yaml"] and not stale.exists()
    assert own.exists() and sorted(p.name for p in examples.iterdir()) == sorted(
        p.name for p in (DEPLOY / "examples").iterdir())
