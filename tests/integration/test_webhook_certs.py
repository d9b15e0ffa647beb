"""The operator issues its own webhook certificate (``webhook.certificate.source: operator``).

The real operator runs against the Kubernetes API emulator with the arguments the
chart gives it, webhook on. The chart's MutatingWebhookConfiguration is created in
the emulator as ``kubectl apply -f deploy/`` would. Then, as the API server would,
AdmissionReviews are POSTed over HTTPS trusting only the caBundle the operator
patched in, for the Service's DNS name.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import socket
import ssl
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from amfs_operator import webhook, webhook_certs
from amfs_operator.cli import parse_args
from amfs_operator.exceptions import WebhookConfigError
from amfs_operator.kube import WEBHOOK_CONFIGURATIONS
from scripts.render_manifests import render_chart
from tests.chart.conftest import find, objects
from tests.fixtures.kubernetes import Cluster, OperatorThread
from tests.fixtures.s3 import free_port
from tests.integration.test_webhook import agent_pod, applied, memory_spec, wait_listening


@dataclasses.dataclass
class Install:
    """The chart's objects in the emulator and the operator configuration it implies."""

    config_doc: dict[str, Any]
    operator_args: dict[str, Any]
    target: webhook_certs.Target
    cluster: Cluster

    def webhook_configuration(self) -> dict[str, Any]:
        found = self.cluster.kube.get_webhook_configuration(self.target.config_name)
        assert found is not None
        return found

    def ca_bundle(self) -> bytes:
        return base64.b64decode(
            self.webhook_configuration()["webhooks"][0]["clientConfig"]["caBundle"])

    def secret(self) -> dict[str, Any] | None:
        return self.cluster.get(self.target.namespace, "secrets", self.target.secret)


@pytest.fixture
def install(cluster: Cluster, k8s_namespace: str, tmp_path: Path) -> Iterator[Install]:
    ns = k8s_namespace
    values = {"fullnameOverride": f"amfs-{ns}",  # cluster-scoped names of its own
              "webhook": {"certificate": {"source": "operator"}}}
    docs = objects(render_chart(values, namespace=ns))
    config_doc = find(docs, "MutatingWebhookConfiguration")
    [container] = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    chart_config = parse_args(container["args"][1:])  # what the chart runs
    operator_args = {**dataclasses.asdict(chart_config), "namespaces": (ns,),
                     "listen_host": "127.0.0.1", "webhook_cert_dir": str(tmp_path / "certs")}
    cluster.kube.request("POST", WEBHOOK_CONFIGURATIONS, config_doc)
    try:
        yield Install(config_doc, operator_args, chart_config.webhook_target, cluster)
    finally:
        cluster.kube.request("DELETE",
                             f"{WEBHOOK_CONFIGURATIONS}/{chart_config.webhook_config_name}")


def start(install: Install, start_operator: Callable[..., OperatorThread]) -> OperatorThread:
    operator = start_operator(**{**install.operator_args, "metrics_port": free_port(),
                                 "health_port": free_port(), "webhook_port": free_port()})
    assert operator.error is None, repr(operator.error)
    wait_listening("127.0.0.1", operator.config.webhook_port)
    return operator


def review(operator: OperatorThread, install: Install, pod: dict[str, Any],
           ca_bundle: bytes) -> tuple[dict[str, Any], bytes]:
    """POST an AdmissionReview as the API server does; (response, the server's certificate)."""
    namespace = install.target.namespace
    hostname = f"{install.target.service}.{namespace}.svc"
    body = json.dumps({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()), "operation": "CREATE", "namespace": namespace,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod, "oldObject": None, "dryRun": False,
        },
    }).encode()
    # Trust exactly what the API server would: the caBundle, for the Service's name.
    context = ssl.create_default_context(cadata=ca_bundle.decode())
    with socket.create_connection(("127.0.0.1", operator.config.webhook_port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=hostname) as tls:
        served = tls.getpeercert(binary_form=True)
        tls.sendall(
            f"POST /{webhook.HANDLER_ID} HTTP/1.1\r\nHost: {hostname}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode() + body)
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, content = data.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"200", data[:300]
    assert served is not None
    return dict(json.loads(content)["response"]), served


def der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


def test_the_operator_issues_a_trusted_certificate_and_restarts_reuse_it(
    install: Install, start_operator: Callable[..., OperatorThread], cluster: Cluster,
) -> None:
    target = install.target
    assert "caBundle" not in install.config_doc["webhooks"][0]["clientConfig"]

    operator = start(install, start_operator)

    secret = install.secret()
    assert secret is not None and secret["type"] == "kubernetes.io/tls"
    assert webhook_certs.is_managed(secret)
    tls = webhook_certs.from_secret(secret)
    assert tls is not None and webhook_certs.problems(tls, target.dns_names) == []
    # The caBundle is the Secret's CA; nothing else of the configuration changed.
    assert install.ca_bundle() == tls.ca
    stored = install.webhook_configuration()
    del stored["webhooks"][0]["clientConfig"]["caBundle"]
    assert stored["webhooks"] == install.config_doc["webhooks"]
    cert_dir = Path(install.operator_args["webhook_cert_dir"])
    assert (cert_dir / "tls.crt").read_bytes() == tls.cert
    assert stat.S_IMODE((cert_dir / "tls.key").stat().st_mode) == 0o600

    # An annotated pod gets its sidecar over TLS that trusts nothing but the caBundle.
    cluster.create_memory(target.namespace, "team-memory", memory_spec())
    pod = agent_pod(target.namespace, "team-memory")
    response, served = review(operator, install, pod, install.ca_bundle())
    assert response["allowed"] is True
    patched = applied(pod, response)
    assert patched["spec"]["initContainers"][0]["name"] == "amfs-sidecar"
    assert served == der(tls.cert)

    # A restart (or a second replica) reuses the Secret: nothing is re-issued or rewritten.
    operator.stop()
    restarted = start(install, start_operator)
    after = install.secret()
    assert after is not None
    assert after["metadata"]["resourceVersion"] == secret["metadata"]["resourceVersion"]
    assert install.ca_bundle() == tls.ca
    response, served = review(restarted, install, pod, tls.ca)
    assert response["allowed"] is True and served == der(tls.cert)


def test_an_expiring_certificate_is_replaced_and_its_ca_no_longer_trusted(
    install: Install, start_operator: Callable[..., OperatorThread], cluster: Cluster,
) -> None:
    target = install.target
    ten_days_left = webhook_certs.issue(target.dns_names, now=datetime.datetime.now(
        datetime.UTC) - datetime.timedelta(days=webhook_certs.DEFAULT_VALIDITY_DAYS - 10))
    cluster.kube.create(webhook_certs.secret_body(target, ten_days_left))
    cluster.kube.patch_webhook_configuration(target.config_name, webhook_certs.ca_bundle_patch(
        install.config_doc, ten_days_left.ca, target))

    operator = start(install, start_operator)

    secret = install.secret()
    assert secret is not None
    tls = webhook_certs.from_secret(secret)
    assert tls is not None and tls.ca != ten_days_left.ca
    assert webhook_certs.problems(tls, target.dns_names) == []
    assert install.ca_bundle() == tls.ca
    pod = agent_pod(target.namespace)
    response, served = review(operator, install, pod, tls.ca)
    assert response["allowed"] is True and served == der(tls.cert)
    with pytest.raises(ssl.SSLCertVerificationError):
        review(operator, install, pod, ten_days_left.ca)


def test_a_secret_it_did_not_make_stops_the_operator_untouched(
    install: Install, start_operator: Callable[..., OperatorThread], cluster: Cluster,
) -> None:
    target = install.target
    cluster.create_secret(target.namespace, target.secret, {"tls.crt": "mine", "tls.key": "mine"})
    before = install.secret()

    operator = start_operator(**{**install.operator_args, "metrics_port": free_port(),
                                 "health_port": free_port(), "webhook_port": free_port()})

    assert isinstance(operator.error, WebhookConfigError)
    assert f"Secret {target.namespace}/{target.secret} exists but was not made by the " \
        "operator" in str(operator.error)
    assert install.secret() == before
    assert "caBundle" not in install.webhook_configuration()["webhooks"][0]["clientConfig"]


def test_a_missing_webhook_configuration_is_a_clear_start_up_error(
    install: Install, start_operator: Callable[..., OperatorThread],
) -> None:
    operator = start_operator(**{**install.operator_args, "metrics_port": free_port(),
                                 "health_port": free_port(), "webhook_port": free_port(),
                                 "webhook_config_name": "not-there"})

    assert isinstance(operator.error, WebhookConfigError)
    assert str(operator.error).startswith(
        "MutatingWebhookConfiguration not-there not found (--webhook-config-name)")
