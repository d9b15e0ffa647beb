"""`helm install` and `helm upgrade` for real, by Helm's SDK, against the API emulator.

This is where the webhook certificate's ``lookup`` runs: offline rendering always
generates a new CA, an upgrade against a cluster must keep the one installed. The
emulator is the project's KMock emulator (tests/fixtures/kubernetes.py) with the
kinds the chart creates, server-side apply (Helm 4 applies every object), and an
empty OpenAPI document (Helm then skips client-side schema validation, which
tests/chart/test_chart.py does offline instead). Releases are stored in memory.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import helm_python
import kmock
import pytest
import yaml
from kmock._internal import enums, rendering

from scripts.render_manifests import CHART, NAMESPACE, RELEASE
from tests.fixtures.kubernetes import CRD_PATH, VERBS, AMFSEmulator, EmulatorThread

CHART_KINDS = [
    ("", "v1", "serviceaccounts", "ServiceAccount", True),
    ("", "v1", "services", "Service", True),
    ("apps", "v1", "deployments", "Deployment", True),
    ("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    ("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
    ("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations",
     "MutatingWebhookConfiguration", False),
    ("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False),
]


class ApplyingEmulator(AMFSEmulator):  # type: ignore[misc]
    """Server-side apply of a missing object creates it, as the API server does."""

    async def _handle(self, request: rendering.Request) -> Any:
        applying = "apply-patch" in request.headers.get("Content-Type", "")
        if applying and request.name and request.action == enums.action.UPDATE:
            key = (request.resource, request.namespace, request.name)
            async with self._lock:
                if key not in self._objects or self._objects[key].deleted:
                    await self._create(request)
        return await super()._handle(request)


class ClusterThread(EmulatorThread):
    def __init__(self, version: tuple[int, int] = (1, 31)) -> None:
        super().__init__()
        self.version = version

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with ApplyingEmulator() as emulator, kmock.Server(emulator) as server:
            emulator.declare_core()
            emulator.declare_crd(yaml.safe_load(CRD_PATH.read_text()))
            for group, version, plural, kind, namespaced in CHART_KINDS:
                resource = kmock.resource(group, version, plural)
                emulator.resources[resource] = kmock.ResourceInfo(
                    kind=kind, singular=kind.lower(), namespaced=namespaced, verbs=VERBS)
                emulator._kinds[resource] = kind
            major, minor = self.version
            emulator["get /version"] << {"major": str(major), "minor": str(minor),
                                         "gitVersion": f"v{major}.{minor}.0"}
            emulator["get /openapi/v2"] << b""
            emulator["get /openapi/v3"] << {"paths": {}}
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def object(self, group: str, version: str, plural: str, namespace: str | None,
               name: str) -> dict[str, Any]:
        assert self.emulator is not None
        key = (kmock.resource(group, version, plural), namespace, name)
        return dict(self.emulator.objects[key].raw)

    def delete(self, group: str, version: str, plural: str, namespace: str | None,
               name: str) -> None:
        assert self.emulator is not None
        del self.emulator.objects[(kmock.resource(group, version, plural), namespace, name)]


@pytest.fixture
def kube_version() -> tuple[int, int]:
    return (1, 31)


@pytest.fixture
def helm_cluster(kube_version: tuple[int, int]) -> Iterator[tuple[ClusterThread,
                                                                  helm_python.Config]]:
    cluster = ClusterThread(kube_version).start()
    kubeconfig = yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": cluster.url}}],
        "users": [{"name": "admin", "user": {"token": "admin-token"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "admin"}}],
    })
    try:
        with helm_python.Config(kubeconfig_content=kubeconfig, namespace=NAMESPACE,
                                storage_driver="memory") as config:
            yield cluster, config
    finally:
        cluster.stop()


def installed_ca(cluster: ClusterThread) -> tuple[str, str]:
    """(the TLS Secret's ca.crt, the webhook's caBundle) as stored in the cluster."""
    secret = cluster.object("", "v1", "secrets", NAMESPACE, "amfs-webhook-tls")
    config = cluster.object("admissionregistration.k8s.io", "v1",
                            "mutatingwebhookconfigurations", None, "amfs-sidecar-injector")
    return secret["data"]["ca.crt"], config["webhooks"][0]["clientConfig"]["caBundle"]


def test_install_creates_the_crd_and_a_trusted_webhook(
    helm_cluster: tuple[ClusterThread, helm_python.Config],
) -> None:
    cluster, config = helm_cluster

    release = config.install(str(CHART), RELEASE, namespace=NAMESPACE, timeout=60)

    assert release["name"] == RELEASE
    crd = cluster.object("apiextensions.k8s.io", "v1", "customresourcedefinitions", None,
                         "amfsmemories.amfs.dev")
    assert crd["spec"]["names"]["kind"] == "AMFSMemory"
    deployment = cluster.object("apps", "v1", "deployments", NAMESPACE, "amfs-operator")
    assert deployment["spec"]["replicas"] == 1
    ca, bundle = installed_ca(cluster)
    assert ca == bundle
    assert base64.b64decode(ca).startswith(b"-----BEGIN CERTIFICATE-----")


def test_upgrade_keeps_the_installed_certificate(
    helm_cluster: tuple[ClusterThread, helm_python.Config],
) -> None:
    cluster, config = helm_cluster
    config.install(str(CHART), RELEASE, namespace=NAMESPACE, timeout=60)
    before = installed_ca(cluster)
    key_before = cluster.object("", "v1", "secrets", NAMESPACE, "amfs-webhook-tls")["data"][
        "tls.key"]

    config.upgrade(str(CHART), RELEASE, {"webhook": {"timeoutSeconds": 7}},
                   namespace=NAMESPACE, timeout=60)

    assert installed_ca(cluster) == before
    secret = cluster.object("", "v1", "secrets", NAMESPACE, "amfs-webhook-tls")
    assert secret["data"]["tls.key"] == key_before
    webhook = cluster.object("admissionregistration.k8s.io", "v1",
                             "mutatingwebhookconfigurations", None, "amfs-sidecar-injector")
    assert webhook["webhooks"][0]["timeoutSeconds"] == 7  # the upgrade did apply


def test_upgrade_without_the_secret_generates_a_new_matching_pair(
    helm_cluster: tuple[ClusterThread, helm_python.Config],
) -> None:
    cluster, config = helm_cluster
    config.install(str(CHART), RELEASE, namespace=NAMESPACE, timeout=60)
    old_ca, _ = installed_ca(cluster)
    cluster.delete("", "v1", "secrets", NAMESPACE, "amfs-webhook-tls")

    config.upgrade(str(CHART), RELEASE, namespace=NAMESPACE, timeout=60)

    ca, bundle = installed_ca(cluster)
    assert ca == bundle != old_ca


@pytest.mark.parametrize("kube_version", [(1, 28)])
def test_native_sidecars_on_an_older_cluster_are_refused_with_the_fix(
    helm_cluster: tuple[ClusterThread, helm_python.Config],
) -> None:
    cluster, config = helm_cluster
    with pytest.raises(helm_python.HelmReleaseError,
                       match=r"sidecar\.mode=native needs Kubernetes 1\.29 or newer.*"
                             r"v1\.28\.0: set sidecar\.mode=container"):
        config.install(str(CHART), RELEASE, namespace=NAMESPACE, timeout=60)

    config.install(str(CHART), RELEASE, {"sidecar": {"mode": "container"}},
                   namespace=NAMESPACE, timeout=60)
    deployment = cluster.object("apps", "v1", "deployments", NAMESPACE, "amfs-operator")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--sidecar-mode=container" in args
