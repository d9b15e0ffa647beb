"""Pure builders: children of a memory and the sidecar the webhook injects."""

from __future__ import annotations

import base64
import copy
from pathlib import Path

import jsonpatch
import pytest

from amfs_operator import resources
from amfs_operator.spec import Memory, parse_memory
from amfs_s3.config import parse_amfs_yaml, read_credentials_dir
from amfs_sidecar import cli as sidecar_cli

IMAGE = "ghcr.io/amfs-k8s/amfs:0.1.0"


def memory(**spec: object) -> Memory:
    return parse_memory({
        "metadata": {"name": "mem", "namespace": "team", "uid": "uid-1"},
        "spec": {"bucket": "bkt", "endpointURL": "http://minio:9000",
                 "credentials": {"secretRef": {"name": "s3"}}, **spec},
    })


def test_config_map_round_trips_through_the_sidecar_config() -> None:
    built = resources.config_map(memory(namespace="prod", sidecar={"pollInterval": "2s"}))
    assert built["metadata"]["name"] == "mem-amfs"
    assert built["metadata"]["namespace"] == "team"
    settings = parse_amfs_yaml(built["data"]["amfs.yaml"])
    assert (settings.bucket, settings.prefix, settings.namespace, settings.endpoint_url,
            settings.poll_interval) == ("bkt", "amfs/", "prod", "http://minio:9000", 2.0)
    assert built["data"]["AMFS_S3_BUCKET"] == "bkt"
    assert built["data"]["AMFS_S3_ENDPOINT"] == "http://minio:9000"
    assert "AWS_SECRET_ACCESS_KEY" not in built["data"]


def test_children_carry_owner_and_labels() -> None:
    mem = memory()
    for child in (resources.config_map(mem), resources.credentials_secret(mem, "id", "key")):
        meta = child["metadata"]
        assert meta["ownerReferences"] == [{
            "apiVersion": "amfs.dev/v1alpha1", "kind": "AMFSMemory", "name": "mem",
            "uid": "uid-1", "controller": True, "blockOwnerDeletion": True}]
        assert meta["labels"]["app.kubernetes.io/instance"] == "mem"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "amfs-operator"
        assert meta["labels"]["app.kubernetes.io/component"] == "memory"


def test_credentials_secret_uses_the_names_the_sidecar_reads(tmp_path: Path) -> None:
    secret = resources.credentials_secret(memory(), "AKIA1", "s/e+c")
    assert secret["metadata"]["name"] == "mem-amfs-credentials"
    assert secret["type"] == "Opaque"
    # Mounted as files, the sidecar's own reader finds both values.
    for key, value in secret["data"].items():
        (tmp_path / key).write_bytes(base64.b64decode(value))
    found = read_credentials_dir(tmp_path)
    assert found["aws_access_key_id"].get_secret_value() == "AKIA1"
    assert found["aws_secret_access_key"].get_secret_value() == "s/e+c"


def test_secret_value_reads_data_and_string_data() -> None:
    secret = {"data": {"a": base64.b64encode(b" v1\n").decode()}, "stringData": {"b": "v2"}}
    assert resources.secret_value(secret, "a") == "v1"
    assert resources.secret_value(secret, "b") == "v2"
    assert resources.secret_value(secret, "c") is None


def test_update_patch_fixes_drift_and_keeps_other_owners() -> None:
    mem = memory()
    desired = resources.config_map(mem)
    other_owner = {"uid": "someone-else", "kind": "X", "name": "x", "apiVersion": "v1"}
    current = copy.deepcopy(desired)
    current["data"]["stale"] = "1"
    current["data"]["AMFS_S3_BUCKET"] = "old"
    current["metadata"]["ownerReferences"] = [other_owner]
    assert resources.needs_update(current, desired)
    merge = resources.update_patch(current, desired)
    assert merge["data"]["stale"] is None and merge["data"]["AMFS_S3_BUCKET"] == "bkt"
    assert merge["metadata"]["ownerReferences"] == [other_owner, mem.owner_reference]
    assert not resources.needs_update(desired, desired)


def test_bound_location_reads_back_what_was_written() -> None:
    mem = memory(prefix="p", namespace="n")
    assert resources.bound_location(resources.config_map(mem)) == (
        "bkt", "p/", "n", "http://minio:9000")


@pytest.mark.parametrize("mode", ["native", "container"])
def test_sidecar_container(mode: str) -> None:
    container = resources.sidecar_container(memory(sidecar={"readOnly": True}), IMAGE, mode)
    assert container["name"] == "amfs-sidecar" and container["image"] == IMAGE
    assert container["args"][:5] == ["sidecar", "--config", "/etc/amfs/config/amfs.yaml",
                                      "--socket", "/var/run/amfs/amfs.sock"]
    assert "--read-only" in container["args"]
    assert "--allow-insecure-socket-dir" in container["args"]  # emptyDir is 0777
    assert container["args"][container["args"].index("--credentials-dir") + 1] == \
        "/etc/amfs/credentials"
    assert container["ports"] == [{"name": "amfs-metrics", "containerPort": 9464}]
    assert container["startupProbe"]["httpGet"] == {"path": "/ready", "port": "amfs-metrics"}
    assert {"name": "AMFS_MEMORY_NAME", "value": "mem"} in container["env"]
    assert {"name": "AMFS_AGENT_ID", "valueFrom": {"fieldRef": {
        "apiVersion": "v1", "fieldPath": "metadata.name"}}} in container["env"]
    # The limit the sidecar exports beside its resident memory: its own container's.
    assert {"name": "AMFS_MEMORY_LIMIT_BYTES", "valueFrom": {"resourceFieldRef": {
        "resource": "limits.memory", "divisor": "1"}}} \
        in container["env"]
    assert container["args"][container["args"].index("--listen") + 1] == "127.0.0.1:8741"
    assert "--listen" not in resources.sidecar_container(memory(), IMAGE, mode, 0)["args"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert ("restartPolicy" in container) is (mode == "native")


def test_scan_pages_reach_the_sidecar_only_when_set() -> None:
    args = resources.sidecar_container(memory(sidecar={"scanPages": 50}), IMAGE)["args"]
    assert args[args.index("--scan-pages") + 1] == "50"
    # The default is the sidecar's own, so pods made before the field existed are unchanged.
    assert "--scan-pages" not in resources.sidecar_container(memory(), IMAGE)["args"]
    assert "--scan-pages" not in resources.sidecar_container(
        memory(sidecar={"scanPages": 5}), IMAGE)["args"]


def test_the_sidecar_reads_the_arguments_the_operator_gives_it() -> None:
    container = resources.sidecar_container(
        memory(sidecar={"scanPages": 50, "readOnly": True}), IMAGE)
    assert container["args"][0] == "sidecar"  # the image's entrypoint picks the program
    parsed = sidecar_cli.build_parser({}).parse_args(container["args"][1:])
    assert (parsed.scan_pages, parsed.read_only) == (50, True)
    assert str(parsed.socket) == "/var/run/amfs/amfs.sock"


def test_service_account_memory_has_no_credentials_mount() -> None:
    mem = memory(credentials={"serviceAccount": {}})
    container = resources.sidecar_container(mem, IMAGE)
    assert "--credentials-dir" not in container["args"]
    assert [v["name"] for v in resources.pod_volumes(mem)] == ["amfs-socket", "amfs-config"]


def test_sidecar_resources_come_from_the_spec() -> None:
    wanted = {"requests": {"cpu": "50m"}, "limits": {"memory": "128Mi"}}
    assert resources.sidecar_container(memory(sidecar={"resources": wanted}),
                                       IMAGE)["resources"] == wanted
    assert resources.sidecar_container(memory(), IMAGE)["resources"] == \
        resources.DEFAULT_SIDECAR_RESOURCES


POD = {
    "metadata": {"name": "agent"},
    "spec": {
        "containers": [
            {"name": "app", "image": "agent:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "helper", "image": "helper:1",
             "env": [{"name": "AMFS_SOCKET", "value": "/custom.sock"}]},
        ],
        "volumes": [{"name": "data", "emptyDir": {}}],
    },
}


def test_inject_native_sidecar() -> None:
    spec = resources.inject_sidecar(POD["spec"], memory(), IMAGE)
    assert spec["initContainers"][0]["name"] == "amfs-sidecar"
    assert spec["initContainers"][0]["restartPolicy"] == "Always"
    app, helper = spec["containers"]
    assert {"name": "AMFS_SOCKET", "value": "/var/run/amfs/amfs.sock"} in app["env"]
    assert helper["env"] == [{"name": "AMFS_SOCKET", "value": "/custom.sock"},  # app's own wins
                             {"name": "AMFS_HTTP_URL", "value": "http://127.0.0.1:8741"}]
    assert {"name": "amfs-socket", "mountPath": "/var/run/amfs"} in app["volumeMounts"]
    assert [v["name"] for v in spec["volumes"]] == [
        "data", "amfs-socket", "amfs-config", "amfs-credentials"]
    assert {"name": "amfs-config", "configMap": {"name": "mem-amfs"}} in spec["volumes"]
    assert {"name": "amfs-credentials", "secret": {"secretName": "mem-amfs-credentials"}} in \
        spec["volumes"]
    assert POD["spec"]["containers"][0]["env"] == [{"name": "X", "value": "1"}]  # input intact


def test_inject_regular_container_for_old_clusters() -> None:
    spec = resources.inject_sidecar(POD["spec"], memory(), IMAGE, "container")
    assert "initContainers" not in spec
    assert spec["containers"][-1]["name"] == "amfs-sidecar"


def test_pod_patch_applies_to_the_injected_spec() -> None:
    patch = resources.pod_patch(POD, memory(), IMAGE)
    patched = jsonpatch.apply_patch(POD, patch)
    assert patched["spec"] == resources.inject_sidecar(POD["spec"], memory(), IMAGE)
    assert patched["metadata"] == POD["metadata"]
