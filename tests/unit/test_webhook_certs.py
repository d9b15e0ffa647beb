"""The operator-issued webhook certificate: the pure parts, and the Secret's life with a
stand-in for the API (races and refusals that the emulator cannot stage on cue)."""

from __future__ import annotations

import base64
import copy
import datetime
import stat
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from amfs_operator import webhook_certs as wc
from amfs_operator.cli import parse_args
from amfs_operator.exceptions import KubeError, WebhookConfigError
from scripts.render_manifests import render_chart

NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
TARGET = wc.Target(namespace="amfs-system", service="amfs-webhook", secret="amfs-webhook-tls",
                   config_name="amfs-sidecar-injector")
NAMES = TARGET.dns_names


@pytest.fixture(scope="module")
def tls() -> wc.ServingCertificate:
    return wc.issue(NAMES, now=NOW, validity=365 * DAY)


def cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


# ---- issuing --------------------------------------------------------------------------------


def test_the_certificate_names_the_service_as_the_api_server_calls_it(
    tls: wc.ServingCertificate,
) -> None:
    leaf = cert(tls.cert)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [
        "amfs-webhook", "amfs-webhook.amfs-system", "amfs-webhook.amfs-system.svc",
        "amfs-webhook.amfs-system.svc.cluster.local"]
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_the_ca_signs_the_certificate_and_is_a_ca(tls: wc.ServingCertificate) -> None:
    ca, leaf = cert(tls.ca), cert(tls.cert)
    leaf.verify_directly_issued_by(ca)  # raises if not
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    assert tls.key.startswith(b"-----BEGIN PRIVATE KEY-----")


def test_validity_starts_a_little_early_and_lasts_as_asked(tls: wc.ServingCertificate) -> None:
    for c in (cert(tls.cert), cert(tls.ca)):
        assert NOW - datetime.timedelta(minutes=10) < c.not_valid_before_utc < NOW
        assert c.not_valid_after_utc == NOW + 365 * DAY
    assert tls.not_after == NOW + 365 * DAY


def test_the_key_never_shows_in_a_repr(tls: wc.ServingCertificate) -> None:
    assert b"PRIVATE" not in repr(tls).encode()
    assert "key=" not in repr(tls)


def test_long_service_and_namespace_names_still_get_a_certificate() -> None:
    long = wc.Target(namespace="n" * 63, service="s" * 63, secret="x", config_name="y")
    issued = wc.issue(long.dns_names, now=NOW)
    assert wc.problems(issued, long.dns_names, now=NOW) == []


# ---- checking -------------------------------------------------------------------------------


def test_a_fresh_certificate_has_no_problems(tls: wc.ServingCertificate) -> None:
    assert wc.problems(tls, NAMES, now=NOW) == []


def test_another_service_name_is_a_problem(tls: wc.ServingCertificate) -> None:
    other = wc.service_dns_names("renamed-webhook", "amfs-system")
    [problem] = wc.problems(tls, other, now=NOW)
    assert problem.startswith("tls.crt does not name renamed-webhook, ")


def test_thirty_days_before_expiry_is_a_problem(tls: wc.ServingCertificate) -> None:
    expiry = NOW + 365 * DAY
    assert wc.problems(tls, NAMES, now=expiry - 31 * DAY) == []
    found = wc.problems(tls, NAMES, now=expiry - 29 * DAY)
    assert found == [f"tls.crt expires on {expiry:%Y-%m-%d} (less than 30 days left)",
                     f"ca.crt expires on {expiry:%Y-%m-%d} (less than 30 days left)"]


def test_a_certificate_from_the_future_is_a_problem(tls: wc.ServingCertificate) -> None:
    assert any("is not valid before" in p for p in wc.problems(tls, NAMES, now=NOW - DAY))


def test_mixed_up_pieces_are_problems(tls: wc.ServingCertificate) -> None:
    other = wc.issue(NAMES, now=NOW)
    swapped_key = wc.ServingCertificate(cert=tls.cert, key=other.key, ca=tls.ca)
    swapped_ca = wc.ServingCertificate(cert=tls.cert, key=tls.key, ca=other.ca)
    assert wc.problems(swapped_key, NAMES, now=NOW) == ["tls.key does not belong to tls.crt"]
    assert wc.problems(swapped_ca, NAMES, now=NOW) == [
        "tls.crt is not signed by ca.crt (InvalidSignature)"]


def test_garbage_is_a_problem_not_a_crash(tls: wc.ServingCertificate) -> None:
    assert wc.problems(wc.ServingCertificate(cert=b"nope", key=tls.key, ca=tls.ca), NAMES) == [
        "tls.crt or ca.crt is not a PEM certificate"]
    assert wc.problems(wc.ServingCertificate(cert=tls.cert, key=b"nope", ca=tls.ca), NAMES) == [
        "tls.key is not an unencrypted PEM private key"]


# ---- create, reuse or rotate ------------------------------------------------------------------


def test_no_secret_means_create() -> None:
    assert wc.decide(None, NAMES, now=NOW) == wc.Decision("create", "no Secret yet")


def test_a_valid_secret_is_reused_until_thirty_days_before_expiry(
    tls: wc.ServingCertificate,
) -> None:
    secret = wc.secret_body(TARGET, tls)
    expiry = NOW + 365 * DAY
    assert wc.decide(secret, NAMES, now=NOW).action == "reuse"
    assert wc.decide(secret, NAMES, now=expiry - 31 * DAY).action == "reuse"
    rotate = wc.decide(secret, NAMES, now=expiry - 29 * DAY)
    assert rotate.action == "rotate" and "less than 30 days left" in rotate.reason


def test_a_secret_for_another_service_or_incomplete_is_rotated(tls: wc.ServingCertificate) -> None:
    secret = wc.secret_body(TARGET, tls)
    other = wc.service_dns_names("renamed", "amfs-system")
    assert wc.decide(secret, other, now=NOW).action == "rotate"
    incomplete = copy.deepcopy(secret)
    del incomplete["data"]["ca.crt"]
    assert wc.decide(incomplete, NAMES, now=NOW) == wc.Decision(
        "rotate", "the Secret lacks tls.crt, tls.key or ca.crt")
    incomplete["data"]["ca.crt"] = "not base64!"
    assert wc.decide(incomplete, NAMES, now=NOW).action == "rotate"


def test_the_secret_is_a_tls_secret_the_operator_marks_as_its_own(
    tls: wc.ServingCertificate,
) -> None:
    secret = wc.secret_body(TARGET, tls)
    assert secret["type"] == "kubernetes.io/tls"
    assert (secret["metadata"]["namespace"], secret["metadata"]["name"]) == (
        "amfs-system", "amfs-webhook-tls")
    assert wc.is_managed(secret)
    assert secret["metadata"]["annotations"] == {
        "amfs.dev/webhook-certificate-expires": f"{NOW + 365 * DAY:%Y-%m-%dT%H:%M:%SZ}"}
    assert base64.b64decode(secret["data"]["tls.key"]) == tls.key
    assert wc.from_secret(secret) == tls
    assert not wc.is_managed({"metadata": {"labels": {"app.kubernetes.io/managed-by": "Helm"}}})


# ---- the caBundle -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart_config() -> dict[str, Any]:
    rendered = render_chart({"webhook": {"certificate": {"source": "operator"}}})
    docs = [d for d in yaml.safe_load_all(rendered["amfs/templates/webhook.yaml"]) if d]
    [config] = [d for d in docs if d["kind"] == "MutatingWebhookConfiguration"]
    return dict(config)


def test_the_patch_sets_the_ca_bundle_and_nothing_else(
    chart_config: dict[str, Any], tls: wc.ServingCertificate,
) -> None:
    ops = wc.ca_bundle_patch(chart_config, tls.ca, TARGET)
    patched = jsonpatch.apply_patch(chart_config, ops)

    assert base64.b64decode(patched["webhooks"][0]["clientConfig"]["caBundle"]) == tls.ca
    del patched["webhooks"][0]["clientConfig"]["caBundle"]
    assert patched == chart_config  # selectors, rules, policy: untouched
    assert wc.ca_bundle_patch(jsonpatch.apply_patch(chart_config, ops), tls.ca, TARGET) == []


def test_only_webhooks_calling_the_service_are_patched(
    chart_config: dict[str, Any], tls: wc.ServingCertificate,
) -> None:
    config = copy.deepcopy(chart_config)
    foreign = copy.deepcopy(config["webhooks"][0])
    foreign["name"] = "someone-else.example.com"
    foreign["clientConfig"] = {"url": "https://example.com/hook", "caBundle": "b3RoZXI="}
    config["webhooks"].insert(0, foreign)

    patched = jsonpatch.apply_patch(config, wc.ca_bundle_patch(config, tls.ca, TARGET))

    assert patched["webhooks"][0] == foreign
    assert patched["webhooks"][1]["clientConfig"]["caBundle"] == base64.b64encode(tls.ca).decode()
    # A reordered list between reading and patching fails the guard, never hits another hook.
    ops = wc.ca_bundle_patch(chart_config, tls.ca, TARGET)
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(config, ops)


def test_a_configuration_without_our_webhook_is_refused_naming_the_flags(
    chart_config: dict[str, Any], tls: wc.ServingCertificate,
) -> None:
    other = wc.Target(namespace="elsewhere", service="amfs-webhook", secret="s",
                      config_name="amfs-sidecar-injector")
    with pytest.raises(WebhookConfigError, match=r"MutatingWebhookConfiguration "
                       r"amfs-sidecar-injector has no webhook calling Service "
                       r"elsewhere/amfs-webhook \(check --webhook-config-name"):
        wc.ca_bundle_patch(chart_config, tls.ca, other)


# ---- the Secret's life ------------------------------------------------------------------------


class StandInKube:
    """The three Secret calls of :class:`amfs_operator.kube.Kube`, in memory; ``before_write``
    runs between a read and the write that follows it (another replica, on cue)."""

    def __init__(self, secret: dict[str, Any] | None = None) -> None:
        self.secret = copy.deepcopy(secret)
        self.version = 1
        self.writes: list[str] = []
        self.before_write: list[Any] = []

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        assert (namespace, name) == (TARGET.namespace, TARGET.secret)
        return copy.deepcopy(self.secret)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        self._interfere()
        if self.secret is not None:
            raise KubeError("POST", "/api/v1/namespaces/amfs-system/secrets", 409, "exists")
        return self._store(obj, "create")

    def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        self._interfere()
        assert self.secret is not None
        if obj["metadata"]["resourceVersion"] != self.secret["metadata"]["resourceVersion"]:
            raise KubeError("PUT", "/api/v1/namespaces/amfs-system/secrets/x", 409, "modified")
        return self._store(obj, "replace")

    def _interfere(self) -> None:
        if self.before_write:
            self.before_write.pop(0)(self)

    def _store(self, obj: dict[str, Any], how: str) -> dict[str, Any]:
        self.version += 1
        self.secret = copy.deepcopy(obj)
        self.secret["metadata"]["resourceVersion"] = str(self.version)
        self.writes.append(how)
        return copy.deepcopy(self.secret)


def stored(tls: wc.ServingCertificate, version: str = "1") -> dict[str, Any]:
    secret = wc.secret_body(TARGET, tls)
    secret["metadata"]["resourceVersion"] = version
    return secret


def test_created_when_absent_reused_when_valid_rotated_when_expiring(
    tls: wc.ServingCertificate,
) -> None:
    kube = StandInKube()
    issued = wc.ensure_secret(kube, TARGET, now=NOW)  # type: ignore[arg-type]
    assert kube.writes == ["create"] and wc.from_secret(kube.secret or {}) == issued

    assert wc.ensure_secret(kube, TARGET, now=NOW) == issued  # type: ignore[arg-type]
    assert kube.writes == ["create"]

    expiring = StandInKube(stored(tls))
    rotated = wc.ensure_secret(expiring, TARGET, now=NOW + 340 * DAY,  # type: ignore[arg-type]
                               validity=90 * DAY)
    assert expiring.writes == ["replace"] and rotated != tls
    assert wc.problems(rotated, NAMES, now=NOW + 340 * DAY) == []
    assert rotated.not_after == NOW + 430 * DAY


def test_a_replica_that_loses_the_race_uses_the_winners_certificate(
    tls: wc.ServingCertificate,
) -> None:
    kube = StandInKube()
    kube.before_write.append(lambda k: setattr(k, "secret", stored(tls, "7")))

    assert wc.ensure_secret(kube, TARGET, now=NOW) == tls  # type: ignore[arg-type]
    assert kube.writes == []

    expiring = wc.issue(NAMES, now=NOW - 350 * DAY, validity=365 * DAY)
    rotating = StandInKube(stored(expiring))
    rotating.before_write.append(lambda k: setattr(k, "secret", stored(tls, "8")))
    assert wc.ensure_secret(rotating, TARGET, now=NOW) == tls  # type: ignore[arg-type]
    assert rotating.writes == []


def test_a_secret_that_never_settles_is_an_error_after_three_attempts() -> None:
    kube = StandInKube()
    garbage = {"metadata": {"labels": {"app.kubernetes.io/managed-by": "amfs-operator"},
                            "resourceVersion": "x"}, "data": {}}

    def break_it(k: StandInKube) -> None:
        k.secret = copy.deepcopy(garbage)
        k.version += 1
        garbage["metadata"]["resourceVersion"] = str(k.version)  # changes again each time

    kube.before_write.extend([break_it] * 3)
    with pytest.raises(WebhookConfigError, match=r"Secret amfs-system/amfs-webhook-tls kept "
                       r"changing while the operator wrote it \(3 attempts\)"):
        wc.ensure_secret(kube, TARGET, now=NOW)  # type: ignore[arg-type]


def test_other_api_failures_are_not_mistaken_for_a_race() -> None:
    kube = StandInKube()

    def forbid(k: StandInKube) -> None:
        raise KubeError("POST", "/api/v1/namespaces/amfs-system/secrets", 403, "forbidden")

    kube.before_write.append(forbid)
    with pytest.raises(KubeError, match="403"):
        wc.ensure_secret(kube, TARGET, now=NOW)  # type: ignore[arg-type]


def test_a_secret_the_operator_did_not_make_is_left_alone(tls: wc.ServingCertificate) -> None:
    theirs = stored(tls)
    theirs["metadata"]["labels"] = {"app.kubernetes.io/managed-by": "Helm"}
    kube = StandInKube(theirs)

    with pytest.raises(WebhookConfigError, match=r"Secret amfs-system/amfs-webhook-tls exists "
                       r"but was not made by the operator .*--webhook-secret"):
        wc.ensure_secret(kube, TARGET, now=NOW)  # type: ignore[arg-type]
    assert kube.writes == [] and kube.secret == theirs


# ---- the files ---------------------------------------------------------------------------------


def test_files_are_written_for_kopf_with_a_private_key(
    tmp_path: Path, tls: wc.ServingCertificate,
) -> None:
    directory = tmp_path / "certs"
    wc.write_files(directory, tls)
    wc.write_files(directory, tls)  # again: replaced in place

    assert (directory / "tls.crt").read_bytes() == tls.cert
    assert (directory / "tls.key").read_bytes() == tls.key
    assert stat.S_IMODE((directory / "tls.key").stat().st_mode) == 0o600
    assert sorted(p.name for p in directory.iterdir()) == ["tls.crt", "tls.key"]


def test_a_read_only_directory_is_a_clear_error(tmp_path: Path, tls: wc.ServingCertificate) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(WebhookConfigError, match=r"cannot write the webhook certificate to .*"
                       r"--webhook-cert-dir must be a writable directory"):
        wc.write_files(blocker / "certs", tls)


# ---- the flags ---------------------------------------------------------------------------------


def test_the_mounted_certificate_stays_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AMFS_OPERATOR_NAMESPACE", raising=False)
    config = parse_args([])
    assert config.webhook_cert_source == "mounted"
    assert (config.webhook_service, config.webhook_secret, config.webhook_config_name) == (
        "amfs-webhook", "amfs-webhook-tls", "amfs-sidecar-injector")


def test_self_signed_flags_make_the_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMFS_OPERATOR_NAMESPACE", "platform")
    config = parse_args(["--webhook-cert-source", "self-signed", "--webhook-service", "hook",
                         "--webhook-secret", "hook-tls", "--webhook-config-name", "hook.example",
                         "--webhook-cert-validity-days", "31"])
    assert config.webhook_target == wc.Target(namespace="platform", service="hook",
                                              secret="hook-tls", config_name="hook.example")
    assert config.webhook_cert_validity_days == 31


@pytest.mark.parametrize(("argv", "message"), [
    (["--webhook-cert-source", "self-signed"],
     "--webhook-namespace (or env AMFS_OPERATOR_NAMESPACE) is required"),
    (["--webhook-cert-source", "self-signed", "--webhook-namespace", "a",
      "--webhook-cert-validity-days", "30"], "--webhook-cert-validity-days must be more than 30"),
    (["--webhook-service", "Hook.svc"], "--webhook-service 'Hook.svc' is not a DNS label"),
    (["--webhook-secret", "a_b"], "--webhook-secret 'a_b' is not a DNS subdomain"),
    (["--webhook-cert-source", "vault"], "invalid choice: 'vault'"),
])
def test_bad_webhook_flags_are_refused_naming_the_flag(
    argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("AMFS_OPERATOR_NAMESPACE", raising=False)
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err
