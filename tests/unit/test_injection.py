"""Sidecar injection as a pure function, on pod specs as the API server sends them."""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest

from amfs_operator import injection
from amfs_operator.exceptions import InjectionError
from amfs_operator.injection import InjectionSettings, inject

NATIVE = InjectionSettings(image="registry.example/amfs:1.2.3", mode="native")
CONTAINER = InjectionSettings(image="registry.example/amfs:1.2.3", mode="container")


def memory(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "amfs.dev/v1alpha1",
        "kind": "AMFSMemory",
        "metadata": {
            "name": "team-memory",
            "namespace": "agents",
            "uid": "7a9d4c1e-0000-4000-8000-000000000001",
            "generation": 3,
            "creationTimestamp": "2025-01-01T00:00:00Z",
        },
        "spec": {
            "bucket": "acme-agent-memory",
            "prefix": "amfs/",
            "credentials": {"secretRef": {"name": "s3-creds"}},
            "sidecar": {
                "pollInterval": "5s",
                "resources": {"requests": {"cpu": "20m", "memory": "96Mi"},
                              "limits": {"memory": "192Mi"}},
            },
            **spec,
        },
        "status": {
            "phase": "Ready",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}],
        },
    }


def agent_pod(**annotations: str) -> dict[str, Any]:
    """A pod as a ReplicaSet creates it, labelled for team-memory: generateName, owner, two
    app containers, an init container, its own volumes, env and security context."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "planner-7d9f8b6c5-",
            "namespace": "agents",
            "labels": {"app": "planner", "pod-template-hash": "7d9f8b6c5",
                       "amfs.dev/memory": "team-memory"},
            "annotations": dict(annotations),
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "planner-7d9f8b6c5",
                "uid": "0b6e5c1e-0000-4000-8000-000000000002", "controller": True,
                "blockOwnerDeletion": True,
            }],
        },
        "spec": {
            "serviceAccountName": "planner",
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000,
                                "supplementalGroups": [3000]},
            "initContainers": [{
                "name": "wait-for-db",
                "image": "busybox:1.36",
                "command": ["sh", "-c", "until nc -z db 5432; do sleep 1; done"],
            }],
            "containers": [
                {
                    "name": "planner",
                    "image": "registry.example/planner:4.2",
                    "args": ["--workers", "4"],
                    "env": [
                        {"name": "LOG_LEVEL", "value": "info"},
                        {"name": "OPENAI_API_KEY", "valueFrom": {
                            "secretKeyRef": {"name": "openai", "key": "api-key"}}},
                    ],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "volumeMounts": [{"name": "config", "mountPath": "/etc/planner"}],
                    "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
                },
                {
                    "name": "log-shipper",
                    "image": "fluent/fluent-bit:3.1",
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                },
            ],
            "volumes": [
                {"name": "config", "configMap": {"name": "planner-config"}},
                {"name": "tmp", "emptyDir": {}},
            ],
        },
    }


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    spec = pod["spec"]
    found = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name]
    assert len(found) == 1, f"expected exactly one container {name!r}, found {len(found)}"
    return found[0]


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in c.get("env", [])}


def arg_after(c: dict[str, Any], flag: str) -> str:
    args = c["args"]
    return args[args.index(flag) + 1]


# ---- native mode ------------------------------------------------------------------------


def test_native_sidecar_is_the_first_init_container_and_restarts_always() -> None:
    result = inject(agent_pod(), memory(), NATIVE)

    assert result.injected and result.reason == "injected" and result.memory == "team-memory"
    init = result.pod["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["amfs-sidecar", "wait-for-db"]
    sidecar = init[0]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == "registry.example/amfs:1.2.3"
    assert sidecar["args"][0] == "sidecar"  # the image's entrypoint picks the program
    assert arg_after(sidecar, "--config") == "/etc/amfs/config/amfs.yaml"
    assert arg_after(sidecar, "--credentials-dir") == "/etc/amfs/credentials"
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/ready", "port": "amfs-metrics"}
    assert {"name": "amfs-metrics", "containerPort": 9464} in sidecar["ports"]
    assert env(sidecar)["AMFS_MEMORY_NAME"] == "team-memory"
    assert env(sidecar)["AMFS_MEMORY_NAMESPACE"] == "agents"
    # Provenance: what this sidecar writes says which pod wrote it.
    assert env(sidecar)["AMFS_AGENT_ID"] == {
        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}
    assert arg_after(sidecar, "--listen") == "127.0.0.1:8741"
    assert sidecar["resources"] == memory()["spec"]["sidecar"]["resources"]
    assert sidecar["securityContext"]["runAsNonRoot"] is True
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    assert [c["name"] for c in result.pod["spec"]["containers"]] == ["planner", "log-shipper"]


def test_every_app_container_gets_the_socket_and_keeps_its_own_env_and_mounts() -> None:
    pod = inject(agent_pod(), memory(), NATIVE).pod

    planner = container(pod, "planner")
    assert env(planner) == {
        "LOG_LEVEL": "info",
        "OPENAI_API_KEY": {"secretKeyRef": {"name": "openai", "key": "api-key"}},
        "AMFS_SOCKET": "/var/run/amfs/amfs.sock",
        "AMFS_HTTP_URL": "http://127.0.0.1:8741",  # upstream clients need no configuration
    }
    assert planner["volumeMounts"] == [
        {"name": "config", "mountPath": "/etc/planner"},
        {"name": "amfs-socket", "mountPath": "/var/run/amfs"},
    ]
    for name in ("log-shipper", "wait-for-db"):  # init steps after the sidecar may use it too
        other = container(pod, name)
        assert env(other)["AMFS_SOCKET"] == "/var/run/amfs/amfs.sock"
        assert {"name": "amfs-socket", "mountPath": "/var/run/amfs"} in other["volumeMounts"]
    sidecar_mounts = {m["mountPath"]: m["name"] for m in container(pod, "amfs-sidecar")[
        "volumeMounts"]}
    assert sidecar_mounts == {"/var/run/amfs": "amfs-socket", "/etc/amfs/config": "amfs-config",
                              "/etc/amfs/credentials": "amfs-credentials"}


def test_volumes_are_appended_and_mount_the_memorys_config_map_and_secret() -> None:
    pod = inject(agent_pod(), memory(), NATIVE).pod

    assert pod["spec"]["volumes"] == [
        {"name": "config", "configMap": {"name": "planner-config"}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "amfs-socket", "emptyDir": {}},
        {"name": "amfs-config", "configMap": {"name": "team-memory-amfs"}},
        {"name": "amfs-credentials", "secret": {"secretName": "team-memory-amfs-credentials"}},
    ]


def test_the_pod_joins_the_sidecars_group_and_is_labelled() -> None:
    pod = inject(agent_pod(), memory(), NATIVE).pod

    # The socket is 0660 for the sidecar's group; the app's own user and groups stay.
    assert pod["spec"]["securityContext"] == {
        "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000,
        "supplementalGroups": [3000, injection.SIDECAR_GID],
    }
    sidecar = container(pod, "amfs-sidecar")
    assert sidecar["securityContext"]["runAsGroup"] == injection.SIDECAR_GID
    assert pod["metadata"]["labels"] == {
        "app": "planner", "pod-template-hash": "7d9f8b6c5", "amfs.dev/memory": "team-memory",
        "amfs.dev/sidecar": "injected",
    }


def test_injection_does_not_touch_its_input_and_the_json_patch_reproduces_it() -> None:
    pod = agent_pod()
    before = copy.deepcopy(pod)

    result = inject(pod, memory(), NATIVE)

    assert pod == before
    ops = injection.json_patch(pod, result.pod)
    assert ops
    assert jsonpatch.apply_patch(pod, ops) == result.pod


@pytest.mark.parametrize("settings", [NATIVE, CONTAINER], ids=["native", "container"])
def test_the_injected_pod_is_a_valid_kubernetes_pod(settings: InjectionSettings) -> None:
    pod = inject(agent_pod(), memory(), settings).pod
    # Native sidecars (restartPolicy on an init container) need Kubernetes >= 1.29.
    kubernetes_validate.validate(pod, "1.29", strict=True)


# ---- container mode -----------------------------------------------------------------------


def test_container_mode_appends_a_regular_container_with_a_readiness_probe() -> None:
    pod = inject(agent_pod(), memory(), CONTAINER).pod

    assert [c["name"] for c in pod["spec"]["containers"]] == [
        "planner", "log-shipper", "amfs-sidecar"]
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["wait-for-db"]
    sidecar = container(pod, "amfs-sidecar")
    assert "restartPolicy" not in sidecar
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "amfs-metrics"}
    # Init containers run before a regular sidecar exists: nothing to connect to.
    assert "AMFS_SOCKET" not in env(container(pod, "wait-for-db"))
    assert env(container(pod, "planner"))["AMFS_SOCKET"] == "/var/run/amfs/amfs.sock"


# ---- what the memory and the pod's annotations change ------------------------------------


def test_service_account_credentials_mount_no_secret() -> None:
    pod = inject(agent_pod(), memory(credentials={"serviceAccount": {}}), NATIVE).pod

    sidecar = container(pod, "amfs-sidecar")
    assert "--credentials-dir" not in sidecar["args"]
    assert "amfs-credentials" not in {v["name"] for v in pod["spec"]["volumes"]}
    assert "/etc/amfs/credentials" not in {m["mountPath"] for m in sidecar["volumeMounts"]}


def test_annotations_tune_poll_interval_and_resources() -> None:
    pod = agent_pod(**{
        "amfs.dev/poll-interval": "500ms",
        "amfs.dev/sidecar-cpu-limit": "200m",
        "amfs.dev/sidecar-memory-request": "128Mi",
    })

    sidecar = container(inject(pod, memory(), NATIVE).pod, "amfs-sidecar")

    assert arg_after(sidecar, "--poll-interval") == "0.5"
    assert sidecar["resources"] == {
        "requests": {"cpu": "20m", "memory": "128Mi"},  # annotation wins, cpu from the spec
        "limits": {"memory": "192Mi", "cpu": "200m"},
    }


def test_whole_second_poll_interval_is_written_as_an_integer() -> None:
    sidecar = container(inject(agent_pod(**{"amfs.dev/poll-interval": "2s"}), memory(),
                               NATIVE).pod, "amfs-sidecar")
    assert arg_after(sidecar, "--poll-interval") == "2"


@pytest.mark.parametrize(
    ("annotation", "value", "message"),
    [
        ("amfs.dev/poll-interval", "fast", "annotation amfs.dev/poll-interval: 'fast' is not a"),
        ("amfs.dev/poll-interval", "0s", "annotation amfs.dev/poll-interval: must be greater"),
        ("amfs.dev/sidecar-memory-limit", "lots", "annotation amfs.dev/sidecar-memory-limit: "
                                                  "'lots' is not a Kubernetes quantity"),
        ("amfs.dev/sidecar-cpu-request", "-1", "annotation amfs.dev/sidecar-cpu-request"),
    ],
)
def test_a_bad_annotation_is_refused_naming_it_and_the_rule(
    annotation: str, value: str, message: str
) -> None:
    with pytest.raises(InjectionError, match="^" + message.replace(".", r"\.")):
        inject(agent_pod(**{annotation: value}), memory(), NATIVE)


def test_a_pod_volume_with_a_name_the_sidecar_needs_is_refused() -> None:
    pod = agent_pod()
    pod["spec"]["volumes"].append({"name": "amfs-config", "emptyDir": {}})

    with pytest.raises(InjectionError, match=r"spec\.volumes: .*'amfs-config'"):
        inject(pod, memory(), NATIVE)


def test_an_app_that_sets_its_own_socket_path_and_mount_keeps_them() -> None:
    pod = agent_pod()
    planner = pod["spec"]["containers"][0]
    planner["env"].append({"name": "AMFS_SOCKET", "value": "/var/run/amfs/amfs.sock"})
    planner["volumeMounts"].append({"name": "amfs-socket", "mountPath": "/var/run/amfs"})

    planner = container(inject(pod, memory(), NATIVE).pod, "planner")

    assert [e["name"] for e in planner["env"]].count("AMFS_SOCKET") == 1
    assert [m["mountPath"] for m in planner["volumeMounts"]].count("/var/run/amfs") == 1


def test_the_settings_image_pull_policy_is_applied() -> None:
    settings = InjectionSettings(image="amfs:dev", mode="native", image_pull_policy="Always")
    sidecar = container(inject(agent_pod(), memory(), settings).pod, "amfs-sidecar")
    assert (sidecar["image"], sidecar["imagePullPolicy"]) == ("amfs:dev", "Always")


def test_the_namespace_argument_stands_in_for_missing_pod_metadata() -> None:
    pod = agent_pod()
    del pod["metadata"]["namespace"]
    assert inject(pod, memory(), NATIVE, namespace="agents").injected
    assert inject(pod, memory(), NATIVE, namespace="kube-system").reason == "excluded-namespace"


# ---- pods that stay as they are ------------------------------------------------------------


def test_an_already_injected_pod_is_left_alone() -> None:
    once = inject(agent_pod(), memory(), NATIVE).pod

    again = inject(once, memory(), NATIVE)

    assert (again.reason, again.injected) == ("already-injected", False)
    assert again.pod == once
    assert injection.json_patch(once, again.pod) == []


def test_a_hand_written_sidecar_is_left_alone() -> None:
    pod = agent_pod()
    pod["spec"]["containers"].append({"name": "amfs-sidecar", "image": "amfs:custom"})
    assert inject(pod, memory(), CONTAINER).reason == "already-injected"


def test_a_missing_memory_refuses_the_pod_naming_the_memory() -> None:
    with pytest.raises(InjectionError) as refused:
        inject(agent_pod(), None, NATIVE)

    assert str(refused.value).startswith(
        "label amfs.dev/memory: AMFSMemory 'team-memory' does not exist in namespace 'agents'")
    assert "retry creating their pods" in str(refused.value)


def test_an_invalid_memory_refuses_the_pod_naming_the_field() -> None:
    with pytest.raises(InjectionError, match=r"AMFSMemory 'team-memory' has an invalid spec "
                                             r"\(.*spec\.bucket"):
        inject(agent_pod(), memory(bucket="Not_A_Bucket"), NATIVE)


def test_a_memory_that_is_not_ready_still_injects_with_a_warning() -> None:
    body = memory()
    body["status"] = {"phase": "Failed", "conditions": [{
        "type": "Ready", "status": "False", "reason": "BucketNotFound",
        "message": "bucket 'acme-agent-memory' does not exist"}]}

    result = inject(agent_pod(), body, NATIVE)

    assert result.injected
    assert "BucketNotFound" in result.warnings[0]


def test_system_namespaces_are_never_injected() -> None:
    pod = agent_pod()
    pod["metadata"]["namespace"] = "kube-system"
    result = inject(pod, memory(), NATIVE)
    assert (result.reason, result.pod) == ("excluded-namespace", pod)


def unlabelled(**annotations: str) -> dict[str, Any]:
    pod = agent_pod(**annotations)
    del pod["metadata"]["labels"]["amfs.dev/memory"]
    return pod


def test_an_unlabelled_pod_is_not_injected_and_not_warned_about() -> None:
    pod = unlabelled()
    assert inject(pod, memory(), NATIVE) == injection.Injection(pod, "not-labelled")


def test_a_blank_label_counts_as_no_label() -> None:
    pod = agent_pod()
    pod["metadata"]["labels"]["amfs.dev/memory"] = " "
    assert inject(pod, memory(), NATIVE).reason == "not-labelled"


def test_an_annotation_only_pod_is_told_about_the_label() -> None:
    pod = unlabelled(**{"amfs.dev/memory": "team-memory"})

    result = inject(pod, memory(), NATIVE)

    assert (result.reason, result.pod, result.memory) == ("annotation-only", pod, "team-memory")
    [warning] = result.warnings
    assert warning.startswith("annotation amfs.dev/memory='team-memory' is set but label "
                              "amfs.dev/memory is not")
    assert "labelled amfs.dev/memory=<AMFSMemory name>" in warning


def test_a_label_and_annotation_naming_different_memories_are_refused() -> None:
    with pytest.raises(InjectionError, match=re.escape(
            "label amfs.dev/memory='team-memory' and annotation amfs.dev/memory='other'")):
        inject(agent_pod(**{"amfs.dev/memory": "other"}), memory(), NATIVE)
    # The same name in both is fine (a pod template half-way through its migration).
    assert inject(agent_pod(**{"amfs.dev/memory": "team-memory"}), memory(), NATIVE).injected


# ---- the loopback HTTP listener -----------------------------------------------------------


def test_the_http_port_annotation_moves_the_listener_and_the_url() -> None:
    pod = inject(agent_pod(**{"amfs.dev/http-port": "9000"}), memory(), NATIVE).pod

    assert arg_after(container(pod, "amfs-sidecar"), "--listen") == "127.0.0.1:9000"
    assert env(container(pod, "planner"))["AMFS_HTTP_URL"] == "http://127.0.0.1:9000"


def test_http_port_zero_serves_the_socket_only() -> None:
    settings = InjectionSettings(image="amfs:dev", http_port=0)
    pod = inject(agent_pod(), memory(), settings).pod

    assert "--listen" not in container(pod, "amfs-sidecar")["args"]
    assert "AMFS_HTTP_URL" not in env(container(pod, "planner"))
    assert env(container(pod, "planner"))["AMFS_SOCKET"] == "/var/run/amfs/amfs.sock"


def test_an_app_port_that_takes_the_listeners_port_is_refused() -> None:
    pod = agent_pod()
    pod["spec"]["containers"][1]["ports"] = [{"containerPort": 8741}]

    with pytest.raises(InjectionError, match=r"port 8741 is already used in the pod; .*"
                                             r"amfs\.dev/http-port"):
        inject(pod, memory(), NATIVE)
    assert inject(pod | {"metadata": {**pod["metadata"], "annotations": {
        "amfs.dev/http-port": "8742"}}}, memory(), NATIVE).injected


@pytest.mark.parametrize(("value", "message"), [
    ("web", "annotation amfs.dev/http-port: 'web' is not a port number"),
    ("70000", "annotation amfs.dev/http-port: 70000 is not a port number"),
    ("9464", "annotation amfs.dev/http-port: 9464 is the sidecar's metrics port"),
])
def test_a_bad_http_port_annotation_is_refused(value: str, message: str) -> None:
    with pytest.raises(InjectionError, match="^" + message):
        inject(agent_pod(**{"amfs.dev/http-port": value}), memory(), NATIVE)


# ---- settings ------------------------------------------------------------------------------


def test_settings_come_from_flags_then_env_then_defaults() -> None:
    env = {"AMFS_SIDECAR_IMAGE": "env/amfs:1", "AMFS_SIDECAR_MODE": "container",
           "AMFS_SIDECAR_IMAGE_PULL_POLICY": "Never", "AMFS_WEBHOOK_FAILURE_POLICY": "Ignore",
           "AMFS_SIDECAR_HTTP_PORT": "9100"}

    assert InjectionSettings.from_environment(env=env) == InjectionSettings(
        image="env/amfs:1", mode="container", image_pull_policy="Never",
        failure_policy="Ignore", http_port=9100)
    assert InjectionSettings.from_environment(image="flag/amfs:2", mode="native", env=env).image \
        == "flag/amfs:2"
    defaults = InjectionSettings.from_environment(env={})
    assert defaults == InjectionSettings(image="ghcr.io/amfs-k8s/amfs:0.1.0", mode="native")
    # Fail closed: a pod that asked for memory is refused rather than started without it.
    assert (defaults.failure_policy, defaults.http_port) == ("Fail", 8741)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "sidecar"}, "sidecar mode 'sidecar' is not native or container"),
        ({"image_pull_policy": "Sometimes"}, "sidecar image pull policy 'Sometimes'"),
        ({"failure_policy": "Maybe"}, "failure policy 'Maybe' is not Ignore or Fail"),
        ({"image": ""}, "sidecar image must not be empty"),
        ({"http_port": 9464}, "AMFS_SIDECAR_HTTP_PORT .*: 9464 is the sidecar's metrics port"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InjectionError, match=message):
        InjectionSettings(**kwargs)
