"""The Helm chart, linted and rendered by Helm's engine, checked object by object."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from amfs_operator import injection, resources, webhook, webhook_certs
from amfs_operator.cli import injection_off_reason, parse_args
from scripts.render_manifests import CHART, NAMESPACE
from tests.chart.conftest import ALL_FEATURES, Render, find, objects
from tests.fixtures.admission import webhook_selects

# Objects the API server knows without CRDs; everything else the chart renders is
# listed in CUSTOM_KINDS (validated structurally, their CRDs are not ours).
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
}
CERT_MANAGER = {"webhook": {"certificate": {"source": "certManager"}}}
OPERATOR_ISSUED = {"webhook": {"certificate": {"source": "operator"}}}
ALL_OPERATOR_ISSUED = {**ALL_FEATURES, "webhook": {**ALL_FEATURES["webhook"], **OPERATOR_ISSUED[
    "webhook"]}}
VARIANTS = [None, ALL_FEATURES, CERT_MANAGER, OPERATOR_ISSUED]
VARIANT_IDS = ["default", "all", "cert-manager", "operator-issued"]
KUBE_VERSIONS = ["1.29", kubernetes_validate.latest_version()]
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
RECOMMENDED = ("app.kubernetes.io/name", "app.kubernetes.io/instance",
               "app.kubernetes.io/component", "app.kubernetes.io/part-of",
               "app.kubernetes.io/managed-by", "app.kubernetes.io/version")


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = find(docs, "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


# ---- lint and schema-valid objects -------------------------------------------------------


@pytest.mark.parametrize("values", VARIANTS, ids=VARIANT_IDS)
def test_helm_lint_finds_nothing_to_warn_about(values: dict[str, Any] | None) -> None:
    report = helm_python.lint(CHART, values, strict=True, kube_version="v1.29.0")

    assert report["errors"] == []
    # Severity 1 is informational ("icon is recommended"); nothing worse is allowed.
    assert [m for m in report["messages"] if m["severity"] > 1] == []


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", VARIANTS, ids=VARIANT_IDS)
def test_every_built_in_object_is_valid_for_kubernetes(
    render: Render, values: dict[str, Any] | None, version: str
) -> None:
    docs = objects(render(values))
    assert docs
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(doc, version, strict=True)


def test_custom_resources_are_well_formed(all_docs: list[dict[str, Any]], render: Render) -> None:
    custom = [d for d in all_docs + objects(render(CERT_MANAGER))
              if (d["apiVersion"], d["kind"]) in CUSTOM_KINDS]
    assert {(d["apiVersion"], d["kind"]) for d in custom} == CUSTOM_KINDS
    for doc in custom:
        assert DNS_LABEL.match(doc["metadata"]["name"]), doc["metadata"]["name"]
        assert doc["metadata"]["namespace"] == NAMESPACE
        assert isinstance(doc["spec"], dict) and doc["spec"]


def test_every_object_carries_the_recommended_labels(all_docs: list[dict[str, Any]]) -> None:
    for doc in all_docs:
        labels = doc["metadata"]["labels"]
        missing = [key for key in RECOMMENDED if key not in labels]
        assert not missing, f"{doc['kind']} {doc['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/name"] == "amfs"
        assert labels["app.kubernetes.io/part-of"] == "amfs"
        assert labels["team"] == "platform"  # commonLabels


def test_names_fit_kubernetes_limits_for_the_longest_release_name(render: Render) -> None:
    release = "a-release-name-that-is-exactly-fifty-three-chars-long"
    assert len(release) == 53  # Helm's maximum
    for doc in objects(render(ALL_FEATURES, name=release)) + objects(
            render(ALL_OPERATOR_ISSUED, name=release)):
        name = doc["metadata"]["name"]
        assert len(name) <= 63 and DNS_LABEL.match(name), f"{doc['kind']} name {name!r}"


# ---- the operator Deployment ---------------------------------------------------------------


def test_operator_runs_once_non_root_read_only_without_capabilities(
    default_docs: list[dict[str, Any]],
) -> None:
    deployment = find(default_docs, "Deployment", "amfs-operator")
    pod = deployment["spec"]["template"]["spec"]
    container = operator_container(default_docs)

    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert pod["serviceAccountName"] == find(default_docs, "ServiceAccount")["metadata"]["name"]


def test_operator_probes_hit_kopfs_liveness_endpoint(default_docs: list[dict[str, Any]]) -> None:
    container = operator_container(default_docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert ports == {"webhook": 9443, "metrics": 9465, "health": 8080}


@pytest.mark.parametrize("values", [None, ALL_FEATURES], ids=["default", "all"])
def test_operator_arguments_are_what_the_operator_cli_accepts(
    render: Render, values: dict[str, Any] | None
) -> None:
    docs = objects(render(values))
    container = operator_container(docs)
    args = container["args"]
    assert args[0] == "operator"  # the image's entrypoint picks the program

    config = parse_args(args[1:])

    merged = {**{"operator": {}, "sidecar": {}}, **(values or {})}
    watched = tuple(merged["operator"].get("watchNamespaces", ()))
    assert config.namespaces == watched
    assert (config.metrics_port, config.health_port, config.webhook_port) == (9465, 8080, 9443)
    assert config.sidecar_mode == merged["sidecar"].get("mode", "native")
    assert config.sidecar_image == merged["sidecar"].get("image", "ghcr.io/amfs-k8s/amfs:0.1.0")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in find(docs, "Deployment")["spec"]["template"]["spec"][
        "volumes"]}
    cert_volume = volumes[mounts[config.webhook_cert_dir]]
    assert cert_volume["secret"]["secretName"] == "amfs-webhook-tls"
    # In the chart the webhook always runs: a missing certificate is a start-up error
    # there, never a silent start without injection (labelled pods would be refused).
    assert injection_off_reason(config) is None


def test_operator_image_and_pod_settings_follow_the_values(all_docs: list[dict[str, Any]]) -> None:
    deployment = find(all_docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = operator_container(all_docs)

    assert container["image"] == "ghcr.io/amfs-k8s/amfs:0.1.0"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert deployment["spec"]["template"]["metadata"]["labels"]["tier"] == "control"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["AMFS_SIDECAR_IMAGE_PULL_POLICY"] == "Always"
    assert env["AMFS_WEBHOOK_FAILURE_POLICY"] == "Fail"


def test_services_reach_the_operators_named_ports(default_docs: list[dict[str, Any]]) -> None:
    deployment = find(default_docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"] for p in operator_container(default_docs)["ports"]}

    webhook_service = find(default_docs, "Service", "amfs-webhook")
    metrics_service = find(default_docs, "Service", "amfs-metrics")
    for service in (webhook_service, metrics_service):
        assert service["spec"]["selector"].items() <= pod_labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports
    assert webhook_service["spec"]["ports"][0]["port"] == 443


# ---- the webhook ---------------------------------------------------------------------------


def test_webhook_calls_the_kopf_handler_through_the_webhook_service(
    default_docs: list[dict[str, Any]],
) -> None:
    config = find(default_docs, "MutatingWebhookConfiguration", "amfs-sidecar-injector")
    [hook] = config["webhooks"]

    assert hook["clientConfig"]["service"] == {
        "name": "amfs-webhook", "namespace": NAMESPACE, "port": 443,
        "path": "/" + webhook.HANDLER_ID,
    }
    assert hook["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                              "resources": ["pods"], "scope": "Namespaced"}]
    assert hook["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1"]


def test_webhook_skips_system_namespaces_its_own_and_injected_pods(
    default_docs: list[dict[str, Any]], all_docs: list[dict[str, Any]],
) -> None:
    [hook] = find(default_docs, "MutatingWebhookConfiguration")["webhooks"]
    [expression] = hook["namespaceSelector"]["matchExpressions"]
    assert expression["key"] == "kubernetes.io/metadata.name"
    assert expression["operator"] == "NotIn"
    assert set(expression["values"]) == set(injection.SYSTEM_NAMESPACES) | {NAMESPACE}
    labelled = {injection.LABEL_MEMORY: "team", "app": "planner"}
    for namespace in [*injection.SYSTEM_NAMESPACES, NAMESPACE]:
        assert not webhook_selects(hook, namespace=namespace, labels=labelled)
    assert not webhook_selects(hook, namespace="agents", labels={
        **labelled, injection.LABEL_SIDECAR: injection.LABEL_SIDECAR_INJECTED})

    [hook] = find(all_docs, "MutatingWebhookConfiguration")["webhooks"]
    assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == [
        "kube-system", "monitoring", NAMESPACE]
    assert not webhook_selects(hook, namespace="monitoring", labels=labelled)
    assert webhook_selects(hook, namespace="kube-public", labels=labelled)


@pytest.mark.parametrize("values", [None, ALL_FEATURES], ids=["default", "all"])
def test_webhook_is_sent_only_pods_labelled_with_a_memory(
    render: Render, values: dict[str, Any] | None
) -> None:
    [hook] = find(objects(render(values)), "MutatingWebhookConfiguration")["webhooks"]

    assert webhook_selects(hook, namespace="agents", labels={"amfs.dev/memory": "team"})
    assert webhook_selects(hook, namespace="agents", labels={"amfs.dev/memory": "team",
                                                             "app": "planner"})
    # Everything else in the cluster never reaches (or waits for) the operator.
    for labels in ({}, {"app": "planner"}, {"amfs.dev/memory-x": "team"},
                   {"amfs.dev/sidecar": "injected"}):
        assert not webhook_selects(hook, namespace="agents", labels=labels), labels
    # The old opt-in, an annotation, is invisible to a selector: such pods are not sent.
    assert "annotations" not in json.dumps(hook["objectSelector"])
    # Only pod creation is intercepted.
    assert not webhook_selects(hook, namespace="agents", labels={"amfs.dev/memory": "team"},
                               operation="UPDATE")
    assert not webhook_selects(hook, namespace="agents", labels={"amfs.dev/memory": "team"},
                               resource="deployments", group="apps")


def test_webhook_fails_closed_and_quickly_by_default(
    default_docs: list[dict[str, Any]], render: Render
) -> None:
    [hook] = find(default_docs, "MutatingWebhookConfiguration")["webhooks"]
    assert hook["failurePolicy"] == "Fail"  # a labelled pod never starts without its memory
    assert 1 <= hook["timeoutSeconds"] <= 5
    container = operator_container(default_docs)
    env = {e["name"]: e.get("value") for e in container["env"]}
    # The handler answers a failed memory lookup by the same policy.
    assert env["AMFS_WEBHOOK_FAILURE_POLICY"] == "Fail"
    assert env["AMFS_SIDECAR_HTTP_PORT"] == str(resources.DEFAULT_HTTP_PORT)

    relaxed = objects(render({"webhook": {"failurePolicy": "Ignore", "timeoutSeconds": 3}}))
    [hook] = find(relaxed, "MutatingWebhookConfiguration")["webhooks"]
    assert (hook["failurePolicy"], hook["timeoutSeconds"]) == ("Ignore", 3)
    env = {e["name"]: e.get("value") for e in operator_container(relaxed)["env"]}
    assert env["AMFS_WEBHOOK_FAILURE_POLICY"] == "Ignore"
    with pytest.raises(helm_python.HelmValuesError, match="timeoutSeconds"):
        render({"webhook": {"timeoutSeconds": 30}})


def test_sidecar_http_port_reaches_the_operator(render: Render) -> None:
    docs = objects(render({"sidecar": {"httpPort": 9100}}))
    env = {e["name"]: e.get("value") for e in operator_container(docs)["env"]}
    settings = injection.InjectionSettings.from_environment(env=env)
    assert settings.http_port == 9100
    for bad in (9464, 70000):
        with pytest.raises(helm_python.HelmValuesError, match="httpPort"):
            render({"sidecar": {"httpPort": bad}})


def test_helm_generated_certificate_serves_the_webhook_service(
    default_docs: list[dict[str, Any]],
) -> None:
    secret = find(default_docs, "Secret", "amfs-webhook-tls")
    [hook] = find(default_docs, "MutatingWebhookConfiguration")["webhooks"]
    assert secret["type"] == "kubernetes.io/tls"
    assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    tls = webhook_certs.from_secret(secret)
    assert tls is not None
    # The operator's own check: signed by the CA, the key fits, the names, > 30 days.
    assert webhook_certs.problems(tls, webhook_certs.service_dns_names(
        "amfs-webhook", NAMESPACE)) == []
    assert tls.ca.startswith(b"-----BEGIN CERTIFICATE-----")


def test_cert_manager_issues_the_certificate_and_injects_the_ca(render: Render) -> None:
    docs = objects(render(CERT_MANAGER))
    config = find(docs, "MutatingWebhookConfiguration")
    certificate = find(docs, "Certificate", "amfs-webhook")
    issuer = find(docs, "Issuer", "amfs-selfsigned")

    assert config["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": f"{NAMESPACE}/amfs-webhook"}
    assert "caBundle" not in config["webhooks"][0]["clientConfig"]
    assert not [d for d in docs if d["kind"] == "Secret"]  # cert-manager writes it
    assert certificate["spec"]["secretName"] == "amfs-webhook-tls"
    assert "amfs-webhook.amfs-system.svc" in certificate["spec"]["dnsNames"]
    assert certificate["spec"]["issuerRef"] == {
        "name": issuer["metadata"]["name"], "kind": "Issuer", "group": "cert-manager.io"}

    own_issuer = {"webhook": {"certificate": {"source": "certManager", "certManager": {
        "issuerRef": {"name": "cluster-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}}}}}
    docs = objects(render(own_issuer))
    assert not [d for d in docs if d["kind"] == "Issuer"]
    assert find(docs, "Certificate")["spec"]["issuerRef"]["name"] == "cluster-ca"


def test_a_certificate_you_provide_needs_its_ca_bundle(render: Render) -> None:
    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n...").decode()
    values = {"webhook": {"certificate": {"source": "secret", "secretName": "my-webhook-tls",
                                          "caBundle": ca}}}
    docs = objects(render(values))
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert find(docs, "MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"][
        "caBundle"] == ca
    volumes = find(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "webhook-certs", "secret": {"secretName": "my-webhook-tls"}} in volumes

    with pytest.raises(helm_python.HelmValuesError, match="/webhook/certificate/caBundle"):
        render({"webhook": {"certificate": {"source": "secret"}}})


def test_an_operator_issued_certificate_renders_nothing_secret(render: Render) -> None:
    docs = objects(render(OPERATOR_ISSUED))
    text = "\n".join(render(OPERATOR_ISSUED).values())

    assert not [d for d in docs if d["kind"] == "Secret"]
    assert "PRIVATE KEY" not in text and "BEGIN CERTIFICATE" not in text
    [hook] = find(docs, "MutatingWebhookConfiguration")["webhooks"]
    assert "caBundle" not in hook["clientConfig"]  # the operator sets it
    # Everything else of the webhook is what the default rendering has.
    [default_hook] = find(objects(render()), "MutatingWebhookConfiguration")["webhooks"]
    default_hook["clientConfig"].pop("caBundle")
    assert hook == default_hook


def test_the_operator_is_told_where_to_keep_and_publish_its_certificate(render: Render) -> None:
    values = {"fullnameOverride": "agents-amfs", "webhook": {"certificate": {
        "source": "operator", "validityDays": 90, "secretName": "injector-tls"}}}
    docs = objects(render(values, namespace="platform"))
    container = operator_container(docs)

    config = parse_args(container["args"][1:])

    assert config.webhook_cert_source == "self-signed"
    assert config.webhook_target == webhook_certs.Target(
        namespace="platform",
        service=find(docs, "Service", "agents-amfs-webhook")["metadata"]["name"],
        secret="injector-tls",
        config_name=find(docs, "MutatingWebhookConfiguration")["metadata"]["name"],
    )
    assert config.webhook_cert_validity_days == 90
    [hook] = find(docs, "MutatingWebhookConfiguration")["webhooks"]
    assert hook["clientConfig"]["service"]["name"] == config.webhook_service
    # The operator writes the files: a writable in-memory emptyDir (the root fs is read-only).
    mount = next(m for m in container["volumeMounts"]
                 if m["mountPath"] == config.webhook_cert_dir)
    assert not mount.get("readOnly")
    volumes = {v["name"]: v for v in find(docs, "Deployment")["spec"]["template"]["spec"][
        "volumes"]}
    assert volumes[mount["name"]]["emptyDir"]["medium"] == "Memory"


def test_operator_issued_certificates_get_exactly_one_secret_and_one_webhook(
    render: Render,
) -> None:
    docs = objects(render(ALL_OPERATOR_ISSUED))
    role = find(docs, "Role", "amfs-operator-webhook-tls")
    config_role = find(docs, "ClusterRole", "amfs-operator-webhook-config")

    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["amfs-webhook-tls"],
         "verbs": ["get", "update"]},
    ]
    assert config_role["rules"] == [
        {"apiGroups": ["admissionregistration.k8s.io"],
         "resources": ["mutatingwebhookconfigurations"],
         "resourceNames": ["amfs-sidecar-injector"], "verbs": ["get", "patch"]},
    ]
    service_account = {"kind": "ServiceAccount", "name": "amfs-operator", "namespace": NAMESPACE}
    binding = find(docs, "RoleBinding", "amfs-operator-webhook-tls")
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert (binding["roleRef"]["kind"], binding["subjects"]) == ("Role", [service_account])
    cluster_binding = find(docs, "ClusterRoleBinding", "amfs-operator-webhook-config")
    assert cluster_binding["roleRef"]["name"] == "amfs-operator-webhook-config"
    assert cluster_binding["subjects"] == [service_account]
    # Other certificate sources grant none of it.
    for values in (None, CERT_MANAGER):
        kinds = {(d["kind"], d["metadata"]["name"]) for d in objects(render(values))}
        assert ("Role", "amfs-operator-webhook-tls") not in kinds
        assert ("ClusterRole", "amfs-operator-webhook-config") not in kinds


# ---- RBAC -----------------------------------------------------------------------------------


def rules(docs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return list(find(docs, "ClusterRole", name)["rules"])


def test_rbac_grants_no_wildcards_and_no_secret_deletion(
    all_docs: list[dict[str, Any]], render: Render,
) -> None:
    docs = all_docs + objects(render(ALL_OPERATOR_ISSUED))
    for role in [d for d in docs if d["kind"] in {"ClusterRole", "Role"}]:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{role['metadata']['name']}: {rule}"
            if "secrets" in rule["resources"]:
                # update only of the operator's own certificate Secret, named.
                allowed = {"get", "list", "watch", "create", "patch"} | (
                    {"update"} if rule.get("resourceNames") else set())
                assert set(rule["verbs"]) <= allowed, f"{role['metadata']['name']}: {rule}"


def test_cluster_wide_by_default_and_per_namespace_when_listed(
    default_docs: list[dict[str, Any]], all_docs: list[dict[str, Any]],
) -> None:
    binding = find(default_docs, "ClusterRoleBinding", "amfs-operator")
    assert binding["roleRef"]["name"] == "amfs-operator"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "amfs-operator",
                                    "namespace": NAMESPACE}]
    assert not [d for d in default_docs if d["kind"] == "RoleBinding"]
    # kopf lists namespaces only to resolve a namespace list; cluster-wide it does not.
    assert not [r for r in rules(default_docs, "amfs-operator-cluster")
                if "namespaces" in r["resources"]]

    bindings = [d for d in all_docs if d["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["agents", "research"]
    assert {b["roleRef"]["name"] for b in bindings} == {"amfs-operator"}
    assert not [d for d in all_docs if d["kind"] == "ClusterRoleBinding"
                and d["roleRef"]["name"] == "amfs-operator"]
    assert {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]} in \
        rules(all_docs, "amfs-operator-cluster")


# ---- monitoring -----------------------------------------------------------------------------


def test_service_monitor_scrapes_the_metrics_service(all_docs: list[dict[str, Any]]) -> None:
    monitor = find(all_docs, "ServiceMonitor")
    service = find(all_docs, "Service", "amfs-metrics")

    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


def test_pod_monitor_scrapes_the_injected_sidecars(all_docs: list[dict[str, Any]],
                                                   render: Render) -> None:
    monitor = find(all_docs, "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"] == {"matchExpressions": [
        {"key": injection.LABEL_SIDECAR, "operator": "Exists"}]}
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["agents"]}
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == resources.METRICS_PORT_NAME
    everywhere = find(objects(render({"metrics": {"podMonitor": {"enabled": True}}})),
                      "PodMonitor")
    assert everywhere["spec"]["namespaceSelector"] == {"any": True}


def test_monitoring_objects_are_off_by_default(default_docs: list[dict[str, Any]]) -> None:
    kinds = {d["kind"] for d in default_docs}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def test_prometheus_rule_has_every_alert_with_thresholds_from_values(render: Render) -> None:
    values = {"metrics": {"prometheusRule": {"enabled": True, "alerts": {
        "pollStale": {"intervals": 4, "minSeconds": 30, "for": "3m", "severity": "critical"},
        "pollLagHigh": {"thresholdSeconds": 12, "for": "5m", "severity": "warning"},
        "clockOffset": {"thresholdSeconds": 45, "for": "20m", "severity": "warning"},
        "memoryNearLimit": {"ratio": 0.9, "for": "15m", "severity": "critical"},
    }}}}
    rule = find(objects(render(values)), "PrometheusRule")
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}

    assert set(alerts) == {
        "AMFSOperatorAbsent", "AMFSMemoryNotReady", "AMFSSidecarDown", "AMFSSidecarsAbsent",
        "AMFSSidecarNeverSynced", "AMFSSidecarPollLagHigh", "AMFSSidecarPollStale",
        "AMFSSidecarS3ErrorRateHigh", "AMFSSidecarAPILatencyHigh", "AMFSSidecarJournalPending",
        "AMFSSidecarClockOffsetHigh", "AMFSSidecarJournalFutureRecords",
        "AMFSSidecarConnectionsRefused", "AMFSSidecarMemoryNearLimit",
    }
    for alert in alerts.values():
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
        assert re.fullmatch(r"[0-9]+[smh]", alert["for"])
    # Relative to each sidecar's own poll interval, with a floor.
    assert alerts["AMFSSidecarPollStale"]["expr"].rstrip().endswith(
        "> clamp_min(amfs_sidecar_poll_interval_seconds * 4, 30)")
    assert (alerts["AMFSSidecarPollStale"]["for"],
            alerts["AMFSSidecarPollStale"]["labels"]["severity"]) == ("3m", "critical")
    assert alerts["AMFSSidecarPollLagHigh"]["expr"].rstrip().endswith("> 12")
    # Either sign: the pod's clock ahead of the storage's or behind it.
    assert alerts["AMFSSidecarClockOffsetHigh"]["expr"].split() == [
        "amfs_sidecar_storage_clock_offset_seconds", ">", "45", "or",
        "amfs_sidecar_storage_clock_offset_seconds", "<", "-45"]
    assert alerts["AMFSSidecarClockOffsetHigh"]["for"] == "20m"
    # Only sidecars whose limit is known have the limit series: the others stay quiet.
    assert alerts["AMFSSidecarMemoryNearLimit"]["expr"].split() == [
        "amfs_sidecar_resident_memory_bytes", "/", "amfs_sidecar_memory_limit_bytes", ">", "0.9"]
    assert (alerts["AMFSSidecarMemoryNearLimit"]["for"],
            alerts["AMFSSidecarMemoryNearLimit"]["labels"]["severity"]) == ("15m", "critical")
    assert alerts["AMFSMemoryNotReady"]["for"] == "10m"
    assert 'job="amfs-metrics"' in alerts["AMFSOperatorAbsent"]["expr"]
    # The PodMonitor's job as Prometheus Operator names it: <namespace>/<name>.
    assert alerts["AMFSSidecarDown"]["expr"] == 'up{job="amfs-system/amfs-sidecars"} == 0'
    # Prometheus' own templating survives Helm's.
    assert "{{ $labels.memory }}" in alerts["AMFSSidecarPollLagHigh"]["annotations"]["summary"]


def test_the_sidecar_job_can_be_named_and_the_absent_alert_switched_off(render: Render) -> None:
    values = {"metrics": {"prometheusRule": {
        "enabled": True, "sidecarJob": "my-agents",
        "alerts": {"sidecarsAbsent": {"enabled": False, "for": "30m", "severity": "warning"}},
    }}}
    rule = find(objects(render(values)), "PrometheusRule")
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert "AMFSSidecarsAbsent" not in alerts
    assert alerts["AMFSSidecarDown"]["expr"] == 'up{job="my-agents"} == 0'


# ---- dashboards and notes --------------------------------------------------------------------


def dashboards(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {}
    for doc in docs:
        if doc["kind"] == "ConfigMap" and "grafana_dashboard" in doc["metadata"]["labels"]:
            for key, text in doc["data"].items():
                found[key] = {"configmap": doc, "dashboard": json.loads(text)}
    return found


def panel_titles(dashboard: dict[str, Any]) -> set[str]:
    return {p["title"] for p in dashboard["panels"] if p["type"] != "row"}


def test_dashboards_are_config_maps_grafana_discovers(
    default_docs: list[dict[str, Any]], all_docs: list[dict[str, Any]],
) -> None:
    found = dashboards(default_docs)
    assert set(found) == {"amfs-memory-overview.json", "amfs-sidecar.json"}
    for item in found.values():
        assert item["configmap"]["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert item["configmap"]["metadata"]["namespace"] == NAMESPACE
    assert len({item["dashboard"]["uid"] for item in found.values()}) == 2

    for item in dashboards(all_docs).values():
        assert item["configmap"]["metadata"]["namespace"] == "monitoring"
        assert item["configmap"]["metadata"]["annotations"] == {"grafana_folder": "AMFS"}


def test_dashboards_show_what_the_issue_asks_for(default_docs: list[dict[str, Any]]) -> None:
    found = dashboards(default_docs)
    overview = found["amfs-memory-overview.json"]["dashboard"]
    sidecar = found["amfs-sidecar.json"]["dashboard"]

    assert {"Memories by phase", "Ready", "Not ready", "Reconcile rate by result",
            "Reconcile errors", "Bucket probe failures"} <= panel_titles(overview)
    assert {"Poll lag p50 by memory", "Poll lag p99 by memory",
            "Time since last successful poll", "Objects by kind", "S3 requests by operation",
            "S3 error rate by operation", "API requests by route", "API latency p99 by route",
            "API errors by route", "Active watchers", "Sidecars down",
            "Sidecars never synced"} <= panel_titles(sidecar)
    variables = {d["uid"]: [v["name"] for v in d["templating"]["list"]]
                 for d in (overview, sidecar)}
    assert variables == {
        "amfs-memory-overview": ["datasource", "cluster", "job"],
        # Not "namespace": the memory's namespace is not the pod's (label namespace).
        "amfs-sidecar": ["datasource", "cluster", "job", "memory_namespace", "memory"],
    }
    for dashboard in (overview, sidecar):
        for panel in dashboard["panels"]:
            if panel["type"] != "row":
                assert panel["targets"] and all(t["expr"] for t in panel["targets"])
                assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
                assert panel["description"] and panel["fieldConfig"]["defaults"]["unit"]
                for target in panel["targets"]:
                    assert "$cluster" in target["expr"] and "$job" in target["expr"], target
        assert "datasource" in {v["name"] for v in dashboard["templating"]["list"]}


def test_dashboards_can_be_switched_off(render: Render) -> None:
    assert dashboards(objects(render({"dashboards": {"enabled": False}}))) == {}


def test_notes_tell_the_user_how_to_label_pods(render: Render) -> None:
    notes = render()["amfs/templates/NOTES.txt"]
    snippet = notes[notes.index("     metadata:"):notes.index("amfs.dev/memory: NAME") + 21]
    assert yaml.safe_load(snippet) == {"metadata": {"labels": {"amfs.dev/memory": "NAME"}}}
    assert "kubectl -n NAMESPACE get amfsmemories" in notes
    assert "grafana_dashboard=1" in notes
    assert "AMFS_SOCKET=/var/run/amfs/amfs.sock" in notes
    assert "AMFS_HTTP_URL=http://127.0.0.1:8741" in notes
    assert "labelled pods are refused until it is back (webhook.failurePolicy=Fail)" in notes
    assert "does not exist (yet) is refused, naming the memory" in notes
    relaxed = render({"webhook": {"failurePolicy": "Ignore"}, "sidecar": {"httpPort": 0}})[
        "amfs/templates/NOTES.txt"]
    assert "labelled pods start without a sidecar (webhook.failurePolicy=Ignore)" in relaxed
    assert "AMFS_HTTP_URL" not in relaxed
