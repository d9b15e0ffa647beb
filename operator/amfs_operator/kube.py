"""The Kubernetes API as the operator uses it: a few JSON calls over the official client.

Objects are plain dicts (what the API speaks), not generated models. Reads return
``None`` for 404; every other failure is a :class:`KubeError`. Children are only
ever created or merge-patched, never replaced, and never touched if another owner
holds the name.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any, Literal

import kopf
import kubernetes.client
import kubernetes.config

from amfs_operator import GROUP, PLURAL, VERSION
from amfs_operator.exceptions import KubeError

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
WEBHOOK_CONFIGURATIONS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
Applied = Literal["created", "updated", "unchanged"]


def load_configuration() -> kubernetes.client.Configuration:
    """In-cluster service account first, then the kubeconfig (``$KUBECONFIG`` as it is now)."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration
        )
    return configuration


def connection_info(configuration: kubernetes.client.Configuration) -> kopf.ConnectionInfo:
    """kopf's credentials from the same configuration the operator's own client uses."""
    header = configuration.get_api_key_with_prefix(
        "BearerToken"
    ) or configuration.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else parts
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


class Kube:
    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self.api = api

    @classmethod
    def from_environment(cls) -> Kube:
        return cls(kubernetes.client.ApiClient(load_configuration()))

    def close(self) -> None:
        self.api.close()

    # ---- raw calls ----------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
    ) -> dict[str, Any] | None:
        """One API call; ``None`` for a 404, :class:`KubeError` for any other failure."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        method_, url, headers, payload, _ = self.api.param_serialize(
            method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        try:
            response = self.api.call_api(method_, url, header_params=headers, body=payload)
            response.read()
        except Exception as exc:  # urllib3/socket errors: the API server is unreachable
            raise KubeError(method, path, 0, str(exc)) from exc
        if response.status == 404 and method in {"GET", "DELETE"}:
            return None
        if response.status >= 400:
            raise KubeError(method, path, response.status, _detail(response.data))
        return json.loads(response.data) if response.data else {}

    # ---- paths --------------------------------------------------------------------------

    @staticmethod
    def core_path(namespace: str, plural: str, name: str | None = None) -> str:
        path = f"/api/v1/namespaces/{namespace}/{plural}"
        return f"{path}/{name}" if name else path

    @staticmethod
    def memory_path(namespace: str, name: str, subresource: str | None = None) -> str:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"
        return f"{path}/{subresource}" if subresource else path

    # ---- what the operator does ---------------------------------------------------------

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.request("GET", self.core_path(namespace, "secrets", name))

    def get_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.request("GET", self.core_path(namespace, "configmaps", name))

    def get_memory(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.request("GET", self.memory_path(namespace, name))

    def patch_memory_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.request(
            "PATCH",
            self.memory_path(namespace, name, "status"),
            {"status": dict(status)},
            content_type=MERGE_PATCH,
        )

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        meta = obj["metadata"]
        return self.request("POST", self.core_path(meta["namespace"], _plural(obj)), obj)

    def merge_patch(self, obj: Mapping[str, Any], patch: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        path = self.core_path(meta["namespace"], _plural(obj), meta["name"])
        self.request("PATCH", path, patch, content_type=MERGE_PATCH)

    def replace(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """PUT the whole object; with ``metadata.resourceVersion`` set, a 409 means someone
        else changed it since it was read."""
        meta = obj["metadata"]
        path = self.core_path(meta["namespace"], _plural(obj), meta["name"])
        return self.request("PUT", path, obj)

    def get_webhook_configuration(self, name: str) -> dict[str, Any] | None:
        return self.request("GET", f"{WEBHOOK_CONFIGURATIONS}/{name}")

    def patch_webhook_configuration(self, name: str, ops: list[dict[str, Any]]) -> None:
        self.request("PATCH", f"{WEBHOOK_CONFIGURATIONS}/{name}", ops, content_type=JSON_PATCH)


def _plural(obj: Mapping[str, Any]) -> str:
    return {"ConfigMap": "configmaps", "Secret": "secrets"}[obj["kind"]]


def _detail(data: bytes | None) -> str:
    try:
        return str(json.loads(data or b"{}").get("message") or data)
    except (ValueError, AttributeError):
        return repr(data)[:200]
