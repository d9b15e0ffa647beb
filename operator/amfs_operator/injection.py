"""Sidecar injection as a pure function: a pod and its AMFSMemory in, the mutated pod out.

The webhook (:mod:`amfs_operator.webhook`) only looks the memory up and turns the
result into an admission response; every decision lives here so it can be tested
on plain pod specs. The sidecar container and its volumes come from the builders
in :mod:`amfs_operator.resources`; this module places them in the pod, points the
app containers at the socket and the loopback listener, and applies the per-pod
annotations.

The opt-in is a LABEL, so the API server's ``objectSelector`` sends only those pods:

``amfs.dev/memory`` (label)          name of an AMFSMemory in the pod's namespace

Annotations tune one pod (all optional):

``amfs.dev/poll-interval``           overrides ``spec.sidecar.pollInterval`` (``2s``, ``500ms``)
``amfs.dev/http-port``               the sidecar's loopback port (default 8741; ``0``: none)
``amfs.dev/sidecar-cpu-request``     overrides the sidecar's resources, one field each
``amfs.dev/sidecar-cpu-limit``
``amfs.dev/sidecar-memory-request``
``amfs.dev/sidecar-memory-limit``

A pod that asked for memory never starts without it: a memory that does not exist
(yet) or has an invalid spec refuses the pod with a message naming it. Controllers
(Deployment, StatefulSet, Job) retry creating their pods, so apply order does not
matter; the sidecar itself cannot be built without the memory's spec (credentials
mode, readOnly, resources).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import jsonpatch

from amfs_operator import resources
from amfs_operator.exceptions import InjectionError, SpecError
from amfs_operator.spec import Memory, parse_duration, parse_memory

# The opt-in label; an annotation of the same name was the opt-in before 0.2 and is
# only recognised to explain the label to its owner.
LABEL_MEMORY = "amfs.dev/memory"
ANNOTATION_MEMORY = "amfs.dev/memory"
ANNOTATION_POLL_INTERVAL = "amfs.dev/poll-interval"
ANNOTATION_HTTP_PORT = "amfs.dev/http-port"
RESOURCE_ANNOTATIONS = {
    "amfs.dev/sidecar-cpu-request": ("requests", "cpu"),
    "amfs.dev/sidecar-cpu-limit": ("limits", "cpu"),
    "amfs.dev/sidecar-memory-request": ("requests", "memory"),
    "amfs.dev/sidecar-memory-limit": ("limits", "memory"),
}
# Set on every injected pod: the webhook's objectSelector skips pods carrying it, and
# the chart's PodMonitor selects them to scrape the sidecars.
LABEL_SIDECAR = "amfs.dev/sidecar"
LABEL_SIDECAR_INJECTED = "injected"

SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})
# The image's non-root user and group (Dockerfile). The socket is created 0660 by
# this group, so every container of the pod gets it as a supplementary group.
SIDECAR_UID = 10001
SIDECAR_GID = 10001

ENV_IMAGE = "AMFS_SIDECAR_IMAGE"
ENV_MODE = "AMFS_SIDECAR_MODE"
ENV_PULL_POLICY = "AMFS_SIDECAR_IMAGE_PULL_POLICY"
ENV_FAILURE_POLICY = "AMFS_WEBHOOK_FAILURE_POLICY"
ENV_HTTP_PORT = "AMFS_SIDECAR_HTTP_PORT"

Mode = Literal["native", "container"]
FailurePolicy = Literal["Ignore", "Fail"]
PULL_POLICIES = ("Always", "IfNotPresent", "Never")

# A Kubernetes resource quantity: "100m", "0.5", "64Mi", "1G", "1e3".
_QUANTITY = re.compile(
    r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$"
)


@dataclass(frozen=True)
class InjectionSettings:
    """How the operator injects, from its flags, env and the chart's values."""

    image: str = resources.DEFAULT_IMAGE
    mode: Mode = "native"
    image_pull_policy: str | None = None
    failure_policy: FailurePolicy = "Fail"
    excluded_namespaces: frozenset[str] = SYSTEM_NAMESPACES
    http_port: int = resources.DEFAULT_HTTP_PORT  # 0: the sidecar serves the socket only

    def __post_init__(self) -> None:
        if self.mode not in ("native", "container"):
            raise InjectionError(f"sidecar mode {self.mode!r} is not native or container")
        if self.image_pull_policy not in (None, *PULL_POLICIES):
            raise InjectionError(
                f"sidecar image pull policy {self.image_pull_policy!r} is not one of "
                f"{', '.join(PULL_POLICIES)}"
            )
        if self.failure_policy not in ("Ignore", "Fail"):
            raise InjectionError(f"failure policy {self.failure_policy!r} is not Ignore or Fail")
        if not self.image:
            raise InjectionError("sidecar image must not be empty")
        _check_http_port(self.http_port, f"{ENV_HTTP_PORT} (chart value sidecar.httpPort)")

    @classmethod
    def from_environment(
        cls,
        *,
        image: str | None = None,
        mode: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> InjectionSettings:
        """Flags win over env (``AMFS_SIDECAR_IMAGE``, ``AMFS_SIDECAR_MODE``,
        ``AMFS_SIDECAR_IMAGE_PULL_POLICY``, ``AMFS_WEBHOOK_FAILURE_POLICY``,
        ``AMFS_SIDECAR_HTTP_PORT``)."""
        env = os.environ if env is None else env
        return cls(
            image=image or env.get(ENV_IMAGE) or resources.DEFAULT_IMAGE,
            mode=(mode or env.get(ENV_MODE) or "native"),  # type: ignore[arg-type]
            image_pull_policy=env.get(ENV_PULL_POLICY) or None,
            failure_policy=(env.get(ENV_FAILURE_POLICY) or "Fail"),  # type: ignore[arg-type]
            http_port=_port_from(env.get(ENV_HTTP_PORT), ENV_HTTP_PORT,
                                 resources.DEFAULT_HTTP_PORT),
        )


Reason = Literal["injected", "not-labelled", "annotation-only", "already-injected",
                 "excluded-namespace"]


@dataclass(frozen=True)
class Injection:
    """What to do with one pod: ``pod`` is the mutated copy (the original if skipped)."""

    pod: dict[str, Any]
    reason: Reason
    memory: str | None = None
    warnings: tuple[str, ...] = field(default=())

    @property
    def injected(self) -> bool:
        return self.reason == "injected"


# ---- reading the pod ---------------------------------------------------------------------


def requested_memory(pod: Mapping[str, Any]) -> str | None:
    """The AMFSMemory named by the pod's ``amfs.dev/memory`` label, if any."""
    return _named(((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_MEMORY))


def annotated_memory(pod: Mapping[str, Any]) -> str | None:
    """The AMFSMemory named by the old opt-in, the ``amfs.dev/memory`` annotation."""
    return _named(_annotations(pod).get(ANNOTATION_MEMORY))


def annotation_only_message(name: str) -> str:
    """What a pod that still opts in by annotation is told (webhook warning, pod Event)."""
    return (
        f"annotation {ANNOTATION_MEMORY}={name!r} is set but label {LABEL_MEMORY} is not: "
        f"the amfs sidecar is injected only into pods labelled {LABEL_MEMORY}=<AMFSMemory "
        "name> (set the label on the pod template; annotations only tune the sidecar); "
        "this pod runs without the sidecar"
    )


def is_injected(pod: Mapping[str, Any]) -> bool:
    """True if the pod already runs a sidecar (injected earlier, or written by hand)."""
    spec = pod.get("spec") or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    return any(c.get("name") == resources.SIDECAR_NAME for c in containers)


def poll_interval_override(pod: Mapping[str, Any]) -> float | None:
    raw = _annotations(pod).get(ANNOTATION_POLL_INTERVAL)
    if raw is None:
        return None
    try:
        return parse_duration(str(raw))
    except ValueError as exc:
        raise InjectionError(f"annotation {ANNOTATION_POLL_INTERVAL}: {exc}") from None


def http_port(pod: Mapping[str, Any], settings: InjectionSettings) -> int:
    """The sidecar's loopback port: the pod's ``amfs.dev/http-port``, else the settings'."""
    raw = _annotations(pod).get(ANNOTATION_HTTP_PORT)
    return _port_from(raw, f"annotation {ANNOTATION_HTTP_PORT}", settings.http_port)


def resource_overrides(pod: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """``{"requests": {"cpu": "50m"}, ...}`` from the sidecar resource annotations."""
    overrides: dict[str, dict[str, str]] = {}
    annotations = _annotations(pod)
    for annotation, (section, resource) in RESOURCE_ANNOTATIONS.items():
        raw = annotations.get(annotation)
        if raw is None:
            continue
        value = str(raw).strip()
        if not _QUANTITY.match(value):
            raise InjectionError(
                f"annotation {annotation}: {value!r} is not a Kubernetes quantity "
                "(e.g. '100m' or '0.5' for CPU, '64Mi' or '1Gi' for memory)"
            )
        overrides.setdefault(section, {})[resource] = value
    return overrides


# ---- the decision ------------------------------------------------------------------------


def inject(
    pod: Mapping[str, Any],
    memory: Mapping[str, Any] | None,
    settings: InjectionSettings,
    *,
    namespace: str | None = None,
) -> Injection:
    """Decide and build: the pod with the sidecar of *memory*, or why it stays as it is.

    *memory* is the AMFSMemory body the pod's label names (``None`` if it does not
    exist). *namespace* is the pod's namespace when its metadata lacks one.
    Raises :class:`InjectionError` when the pod cannot get its sidecar: its own
    annotations or volumes make injection impossible, or the memory it names does
    not exist or is invalid. A pod that asked for memory never starts without it.
    """
    original = copy.deepcopy(dict(pod))
    name = requested_memory(pod)
    pod_namespace = (pod.get("metadata") or {}).get("namespace") or namespace
    if name is None:
        annotated = annotated_memory(pod)
        if annotated is None:
            return Injection(original, "not-labelled")
        return Injection(original, "annotation-only", annotated,
                         (annotation_only_message(annotated),))
    if is_injected(pod):
        return Injection(original, "already-injected", name)
    if pod_namespace in settings.excluded_namespaces:
        return Injection(
            original, "excluded-namespace", name,
            (f"namespace {pod_namespace} is excluded from amfs sidecar injection; "
             f"the pod starts without a sidecar",),
        )
    _refuse_disagreeing_annotation(pod, name)
    if memory is None:
        raise InjectionError(
            f"label {LABEL_MEMORY}: AMFSMemory {name!r} does not exist in namespace "
            f"{pod_namespace!r}, and a pod that asks for memory never starts without it; "
            "create the AMFSMemory (kubectl get amem) - Deployments, StatefulSets and Jobs "
            "retry creating their pods, so they start once it exists"
        )
    try:
        parsed = parse_memory(memory)
    except SpecError as exc:
        raise InjectionError(
            f"label {LABEL_MEMORY}: AMFSMemory {name!r} has an invalid spec ({exc}); "
            "fix the AMFSMemory, its status says the same"
        ) from None
    mutated = _with_sidecar(original, parsed, settings)
    return Injection(mutated, "injected", name, _readiness_warnings(memory))


def json_patch(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The RFC 6902 patch from *before* to *after*, as an admission response carries it."""
    ops: list[dict[str, Any]] = jsonpatch.make_patch(dict(before), dict(after)).patch
    return ops


# ---- building ----------------------------------------------------------------------------


def sidecar(memory: Memory, pod: Mapping[str, Any], settings: InjectionSettings) -> dict[str, Any]:
    """The sidecar container for *pod*: the operator's builder plus what injection adds."""
    container = resources.sidecar_container(
        memory, settings.image, settings.mode, http_port(pod, settings)
    )
    args = list(container.get("args") or [])
    # The image's entrypoint takes the program first (docker/entrypoint.sh).
    if args[:1] != ["sidecar"]:
        args.insert(0, "sidecar")
    interval = poll_interval_override(pod)
    if interval is not None:
        args += ["--poll-interval", _seconds(interval)]
    container["args"] = args
    if settings.image_pull_policy:
        container["imagePullPolicy"] = settings.image_pull_policy
    container["resources"] = _merged_resources(
        container.get("resources") or {}, resource_overrides(pod)
    )
    security = container.setdefault("securityContext", {})
    security.setdefault("runAsUser", SIDECAR_UID)
    security.setdefault("runAsGroup", SIDECAR_GID)
    if settings.mode == "container":
        _add_readiness_probe(container)
    return container


def _with_sidecar(
    pod: dict[str, Any], memory: Memory, settings: InjectionSettings
) -> dict[str, Any]:
    spec = pod.setdefault("spec", {})
    container = sidecar(memory, pod, settings)
    volumes = resources.pod_volumes(memory)
    port = http_port(pod, settings)
    _refuse_taken_names(spec, container, volumes, port)

    app_containers = list(spec.get("containers") or [])
    if settings.mode == "native":
        # First among the init containers, so later init steps can already use memory.
        app_containers += list(spec.get("initContainers") or [])
        spec["initContainers"] = [container, *(spec.get("initContainers") or [])]
    else:
        spec["containers"] = [*(spec.get("containers") or []), container]
    for app in app_containers:
        _add_env(app, resources.app_container_env(port))
        for mount in resources.app_volume_mounts():
            _add_mount(app, mount)

    spec["volumes"] = [*(spec.get("volumes") or []), *volumes]
    security = spec.setdefault("securityContext", {})
    groups = list(security.get("supplementalGroups") or [])
    if SIDECAR_GID not in groups:
        security["supplementalGroups"] = [*groups, SIDECAR_GID]

    labels = pod.setdefault("metadata", {}).setdefault("labels", {})
    labels[LABEL_SIDECAR] = LABEL_SIDECAR_INJECTED
    return pod


def _add_readiness_probe(container: dict[str, Any]) -> None:
    """A regular (non-native) sidecar cannot hold the app containers back with its
    startup probe; readiness at least keeps the pod out of Services until memory works."""
    startup = container.get("startupProbe") or {}
    if "readinessProbe" in container or "httpGet" not in startup:
        return
    container["readinessProbe"] = {
        "httpGet": dict(startup["httpGet"]),
        "periodSeconds": 5,
        "timeoutSeconds": 2,
    }


def _refuse_taken_names(
    spec: Mapping[str, Any],
    container: Mapping[str, Any],
    volumes: Iterable[Mapping[str, Any]],
    listen_port: int,
) -> None:
    existing = {v.get("name") for v in spec.get("volumes") or []}
    for volume in volumes:
        if volume["name"] in existing:
            raise InjectionError(
                f"spec.volumes: the pod already has a volume named {volume['name']!r}, which "
                "the amfs sidecar needs (rename it, or remove the amfs.dev/memory label)"
            )
    ports = {
        p.get("containerPort")
        for c in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]
        for p in c.get("ports") or []
    }
    for port in container.get("ports") or []:
        if port.get("containerPort") in ports:
            raise InjectionError(
                f"spec.containers: port {port.get('containerPort')} is already used in the pod; "
                "the amfs sidecar serves its metrics and probes there"
            )
    if listen_port and listen_port in ports:
        raise InjectionError(
            f"spec.containers: port {listen_port} is already used in the pod; the amfs sidecar's "
            f"loopback HTTP listener needs it (set annotation {ANNOTATION_HTTP_PORT} to a free "
            "port, or to 0 for the socket only)"
        )


def _refuse_disagreeing_annotation(pod: Mapping[str, Any], name: str) -> None:
    annotated = annotated_memory(pod)
    if annotated is not None and annotated != name:
        raise InjectionError(
            f"label {LABEL_MEMORY}={name!r} and annotation {ANNOTATION_MEMORY}={annotated!r} "
            "name different memories; the label decides, remove the annotation"
        )


def _add_env(container: dict[str, Any], env: Iterable[Mapping[str, Any]]) -> None:
    """Append variables the container does not set itself (its own value wins)."""
    current = list(container.get("env") or [])
    names = {item.get("name") for item in current}
    container["env"] = current + [dict(item) for item in env if item["name"] not in names]


def _add_mount(container: dict[str, Any], mount: Mapping[str, Any]) -> None:
    current = list(container.get("volumeMounts") or [])
    if any(m.get("mountPath") == mount["mountPath"] or m.get("name") == mount["name"]
           for m in current):
        return
    container["volumeMounts"] = [*current, dict(mount)]


def _merged_resources(
    base: Mapping[str, Any], overrides: Mapping[str, Mapping[str, str]]
) -> dict[str, Any]:
    merged: dict[str, Any] = copy.deepcopy(dict(base))
    for section, values in overrides.items():
        merged[section] = {**(merged.get(section) or {}), **values}
    return merged


def _readiness_warnings(memory: Mapping[str, Any]) -> tuple[str, ...]:
    status = memory.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is None or ready.get("status") == "True":
        return ()
    name = (memory.get("metadata") or {}).get("name")
    return (
        f"AMFSMemory {name!r} is not Ready ({ready.get('reason')}: {ready.get('message', '')}); "
        "the sidecar is not ready until the memory is",
    )


def _port_from(raw: Any, where: str, default: int) -> int:
    if raw is None or str(raw).strip() == "":
        return default
    try:
        port = int(str(raw).strip())
    except ValueError:
        raise InjectionError(
            f"{where}: {raw!r} is not a port number (1-65535, or 0 for no TCP listener)"
        ) from None
    _check_http_port(port, where)
    return port


def _check_http_port(port: int, where: str) -> None:
    if not 0 <= port <= 65535:
        raise InjectionError(f"{where}: {port} is not a port number (1-65535, or 0 for none)")
    if port == resources.SIDECAR_METRICS_PORT:
        raise InjectionError(
            f"{where}: {port} is the sidecar's metrics port; choose another port"
        )


def _named(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _annotations(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return (pod.get("metadata") or {}).get("annotations") or {}


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
