"""Pure builders: an AMFSMemory in, Kubernetes objects out. No I/O, no clock.

Every child object and the sidecar come from here, so the operator, the injection
webhook and the rendered manifests all agree on names, labels and paths.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Mapping
from typing import Any, Literal

import jsonpatch

from amfs_operator.spec import DEFAULT_SCAN_PAGES, Memory
from amfs_s3.config import (
    ENV_ACCESS_KEY,
    ENV_SECRET_KEY,
    S3Settings,
    parse_amfs_yaml,
    to_amfs_yaml,
    to_env,
)

CONFIG_FILE = "amfs.yaml"
SOCKET_DIR = "/var/run/amfs"
SOCKET_PATH = f"{SOCKET_DIR}/amfs.sock"
CONFIG_DIR = "/etc/amfs/config"
CREDENTIALS_DIR = "/etc/amfs/credentials"
SIDECAR_NAME = "amfs-sidecar"
SIDECAR_METRICS_PORT = 9464
METRICS_PORT_NAME = "amfs-metrics"
DEFAULT_IMAGE = "ghcr.io/amfs-k8s/amfs:0.1.0"
SOCKET_VOLUME = "amfs-socket"
CONFIG_VOLUME = "amfs-config"
CREDENTIALS_VOLUME = "amfs-credentials"
ENV_SOCKET = "AMFS_SOCKET"
ENV_HTTP_URL = "AMFS_HTTP_URL"
ENV_AGENT_ID = "AMFS_AGENT_ID"
ENV_MEMORY_LIMIT = "AMFS_MEMORY_LIMIT_BYTES"
# The sidecar's loopback listener for upstream AMFS clients (amfs CLI, amfs-mcp-server,
# HttpAdapter), which speak TCP only; loopback, so nothing outside the pod reaches it.
DEFAULT_HTTP_PORT = 8741
HTTP_HOST = "127.0.0.1"
ENV_MEMORY_NAME = "AMFS_MEMORY_NAME"
ENV_MEMORY_NAMESPACE = "AMFS_MEMORY_NAMESPACE"
DEFAULT_SIDECAR_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "10m", "memory": "64Mi"},
    "limits": {"memory": "256Mi"},
}


def config_map_name(memory_name: str) -> str:
    return f"{memory_name}-amfs"


def secret_name(memory_name: str) -> str:
    return f"{memory_name}-amfs-credentials"


def labels(memory: Memory, component: str) -> dict[str, str]:
    """The recommended ``app.kubernetes.io/*`` labels for a child of *memory*."""
    return {
        "app.kubernetes.io/name": "amfs",
        "app.kubernetes.io/instance": memory.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "amfs",
        "app.kubernetes.io/managed-by": "amfs-operator",
    }


def s3_settings(memory: Memory) -> S3Settings:
    """The one config schema (shared with the sidecar), without credentials."""
    spec = memory.spec
    return S3Settings(
        bucket=spec.bucket,
        prefix=spec.prefix,
        namespace=memory.amfs_namespace,
        endpoint_url=spec.endpoint_url,
        region_name=spec.region,
        poll_interval=spec.sidecar.poll_interval,
        resync_interval=spec.sidecar.resync_interval,
    )


def _metadata(memory: Memory, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": memory.namespace,
        "labels": labels(memory, "memory"),
        "ownerReferences": [memory.owner_reference],
    }


def config_map(memory: Memory) -> dict[str, Any]:
    """ConfigMap ``{name}-amfs``: the AMFS YAML (key ``amfs.yaml``) and the env form."""
    settings = s3_settings(memory)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(memory, config_map_name(memory.name)),
        "data": {CONFIG_FILE: to_amfs_yaml(settings), **to_env(settings)},
    }


def credentials_secret(
    memory: Memory, access_key_id: str, secret_access_key: str
) -> dict[str, Any]:
    """Secret ``{name}-amfs-credentials`` with keys named as the sidecar reads them."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(memory, secret_name(memory.name)),
        "data": {
            ENV_ACCESS_KEY: _b64(access_key_id),
            ENV_SECRET_KEY: _b64(secret_access_key),
        },
    }


def secret_value(secret: Mapping[str, Any], key: str) -> str | None:
    """A decoded value of a Secret's ``data`` (or ``stringData``), ``None`` if absent."""
    data = secret.get("data") or {}
    if key in data and data[key] is not None:
        return base64.b64decode(data[key]).decode("utf-8").strip()
    string_data = secret.get("stringData") or {}
    value = string_data.get(key)
    return None if value is None else str(value).strip()


def bound_location(config_map_body: Mapping[str, Any]) -> tuple[str, str, str, str | None]:
    """(bucket, prefix, namespace, endpoint) recorded in an existing ConfigMap."""
    settings = parse_amfs_yaml((config_map_body.get("data") or {}).get(CONFIG_FILE, ""))
    return location_of(settings)


def location_of(settings: S3Settings) -> tuple[str, str, str, str | None]:
    return (settings.bucket, settings.prefix, settings.namespace, settings.endpoint_url)


def is_owned_by(obj: Mapping[str, Any], memory: Memory) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == memory.uid for ref in refs)


def needs_update(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """True if *current* lacks something of *desired* (data, type, labels, owner)."""
    cur_meta = current.get("metadata") or {}
    des_meta = desired["metadata"]
    if (current.get("data") or {}) != desired.get("data", {}):
        return True
    if desired.get("type") and current.get("type") != desired["type"]:
        return True
    if any((cur_meta.get("labels") or {}).get(k) != v for k, v in des_meta["labels"].items()):
        return True
    return des_meta["ownerReferences"][0] not in (cur_meta.get("ownerReferences") or [])


def update_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch turning *current* into *desired* (removed data keys set to null)."""
    stale = {key: None for key in (current.get("data") or {}) if key not in desired["data"]}
    owners = [
        ref
        for ref in (current.get("metadata") or {}).get("ownerReferences") or []
        if ref.get("uid") != desired["metadata"]["ownerReferences"][0]["uid"]
    ] + desired["metadata"]["ownerReferences"]
    return {
        "metadata": {"labels": desired["metadata"]["labels"], "ownerReferences": owners},
        "data": {**stale, **desired["data"]},
    }


# ---- the sidecar -------------------------------------------------------------------------

SidecarMode = Literal["native", "container"]


def sidecar_container(
    memory: Memory,
    image: str,
    mode: SidecarMode = "native",
    http_port: int = DEFAULT_HTTP_PORT,
) -> dict[str, Any]:
    """The sidecar container for a pod using *memory*.

    ``native``: an init container with ``restartPolicy: Always`` (Kubernetes >= 1.29), so it
    starts before and stops after the app; ``container``: a regular container for older
    clusters. Its startup probe passes once the sidecar's first sync is done (``/ready``).
    It also listens on ``127.0.0.1:http_port`` (0: socket only) and takes its agent id,
    the provenance of what it writes, from the pod's name.
    """
    args = ["sidecar", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}", "--socket", SOCKET_PATH,
            "--metrics-port", str(SIDECAR_METRICS_PORT),
            # The socket's emptyDir is mode 0777 (kubelet's doing) but only this pod's
            # containers can reach it, so the sidecar's shared-directory rule does not apply.
            "--allow-insecure-socket-dir"]
    if http_port:
        args += ["--listen", f"{HTTP_HOST}:{http_port}"]
    mounts = [
        {"name": SOCKET_VOLUME, "mountPath": SOCKET_DIR},
        {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
    ]
    if memory.spec.credentials.secret_ref is not None:
        args += ["--credentials-dir", CREDENTIALS_DIR]
        mounts.append({"name": CREDENTIALS_VOLUME, "mountPath": CREDENTIALS_DIR, "readOnly": True})
    if memory.spec.sidecar.read_only:
        args.append("--read-only")
    if memory.spec.sidecar.scan_pages != DEFAULT_SCAN_PAGES:
        args += ["--scan-pages", str(memory.spec.sidecar.scan_pages)]
    container: dict[str, Any] = {
        "name": SIDECAR_NAME,
        "image": image,
        "args": args,
        "env": [
            {"name": ENV_MEMORY_NAME, "value": memory.name},
            {"name": ENV_MEMORY_NAMESPACE, "value": memory.namespace},
            {"name": ENV_AGENT_ID,
             "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
            # Exported beside the sidecar's resident memory: its index grows with the memory.
            # No containerName: an env var's resourceFieldRef reads its own container, the
            # sidecar, whether it runs as a native (init) or a regular container.
            {"name": ENV_MEMORY_LIMIT, "valueFrom": {"resourceFieldRef": {
                "resource": "limits.memory", "divisor": "1"}}},
        ],
        "ports": [{"name": METRICS_PORT_NAME, "containerPort": SIDECAR_METRICS_PORT}],
        "volumeMounts": mounts,
        "resources": copy.deepcopy(memory.spec.sidecar.resources or DEFAULT_SIDECAR_RESOURCES),
        "startupProbe": _http_probe("/ready", period=1, failures=120),
        "livenessProbe": _http_probe("/health", period=10, failures=3),
        "securityContext": {
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if mode == "native":
        container["restartPolicy"] = "Always"
    return container


def pod_volumes(memory: Memory) -> list[dict[str, Any]]:
    """The socket's emptyDir, the ConfigMap and (with a secretRef) the credentials Secret."""
    volumes: list[dict[str, Any]] = [
        {"name": SOCKET_VOLUME, "emptyDir": {}},
        {"name": CONFIG_VOLUME, "configMap": {"name": config_map_name(memory.name)}},
    ]
    if memory.spec.credentials.secret_ref is not None:
        volumes.append(
            {"name": CREDENTIALS_VOLUME, "secret": {"secretName": secret_name(memory.name)}}
        )
    return volumes


def http_url(http_port: int) -> str:
    return f"http://{HTTP_HOST}:{http_port}"


def app_container_env(http_port: int = DEFAULT_HTTP_PORT) -> list[dict[str, str]]:
    """Env for every application container: where the sidecar's socket is and, for the
    upstream clients that read ``AMFS_HTTP_URL``, its loopback listener."""
    env = [{"name": ENV_SOCKET, "value": SOCKET_PATH}]
    if http_port:
        env.append({"name": ENV_HTTP_URL, "value": http_url(http_port)})
    return env


def app_volume_mounts() -> list[dict[str, Any]]:
    """Mounts for every application container: the socket's directory."""
    return [{"name": SOCKET_VOLUME, "mountPath": SOCKET_DIR}]


def inject_sidecar(
    pod_spec: Mapping[str, Any], memory: Memory, image: str, mode: SidecarMode = "native"
) -> dict[str, Any]:
    """A copy of *pod_spec* with the sidecar, its volumes, and each app container's
    socket mount and ``AMFS_SOCKET`` (an app's own ``AMFS_SOCKET`` is left alone)."""
    spec = copy.deepcopy(dict(pod_spec))
    sidecar = sidecar_container(memory, image, mode)
    for container in spec.get("containers", []):
        own = {item.get("name") for item in container.get("env", [])}
        container["env"] = [*container.get("env", []),
                            *(e for e in app_container_env() if e["name"] not in own)]
        container["volumeMounts"] = [*container.get("volumeMounts", []), *app_volume_mounts()]
    if mode == "native":
        spec["initContainers"] = [sidecar, *spec.get("initContainers", [])]
    else:
        spec["containers"] = [*spec.get("containers", []), sidecar]
    spec["volumes"] = [*spec.get("volumes", []), *pod_volumes(memory)]
    return spec


def pod_patch(
    pod: Mapping[str, Any], memory: Memory, image: str, mode: SidecarMode = "native"
) -> list[dict[str, Any]]:
    """The JSON patch (RFC 6902) that injects the sidecar into *pod* (for a webhook)."""
    injected = inject_sidecar(pod.get("spec") or {}, memory, image, mode)
    return list(jsonpatch.make_patch({"spec": pod.get("spec") or {}}, {"spec": injected}))


def _http_probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": METRICS_PORT_NAME},
        "periodSeconds": period,
        "failureThreshold": failures,
    }


def _b64(value: str) -> str:
    return base64.b64encode(value.encode("utf-8")).decode("ascii")
