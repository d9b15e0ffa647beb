"""The webhook's TLS certificate, issued by the operator itself (``--webhook-cert-source
self-signed``; chart value ``webhook.certificate.source: operator``).

Nothing secret ships with the manifests: at start-up the operator makes a CA and a
serving certificate for the webhook Service's DNS names, keeps them in one Secret of
its own namespace (so restarts and other replicas reuse them), writes them where
kopf's webhook server reads them, and puts the CA into the caBundle of the chart's
MutatingWebhookConfiguration — that one field, nothing else of it.

The CA signs the serving certificate and its private key is then thrown away: no one,
not even the operator, can issue another certificate this webhook would trust.

Pure: :func:`issue`, :func:`problems`, :func:`decide`, :func:`secret_body`,
:func:`ca_bundle_patch`. With the Kubernetes API (the operator's :class:`Kube`):
:func:`ensure_secret`, :func:`install_ca_bundle` and :func:`provision`, which runs
them in order and writes the files.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from amfs_operator.exceptions import KubeError, WebhookConfigError
from amfs_operator.kube import Kube
from amfs_operator.webhook import CERT_FILE, KEY_FILE

log = logging.getLogger(__name__)

CA_FILE = "ca.crt"  # the Secret's third key, as in Helm's and cert-manager's TLS Secrets
DEFAULT_VALIDITY_DAYS = 3650
# A certificate with less than this left is replaced at start-up.
MIN_REMAINING = datetime.timedelta(days=30)
# Back-dated so that an API server whose clock is a little behind already accepts it.
CLOCK_SKEW = datetime.timedelta(minutes=5)
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGER = "amfs-operator"
EXPIRES_ANNOTATION = "amfs.dev/webhook-certificate-expires"
# Creation races between replicas: a loser re-reads and uses the winner's Secret.
WRITE_ATTEMPTS = 3

Action = Literal["create", "reuse", "rotate"]


@dataclass(frozen=True)
class ServingCertificate:
    """PEM bytes of the serving certificate, its key and the CA that signed it."""

    cert: bytes
    key: bytes = field(repr=False)  # never in a log line or a traceback
    ca: bytes

    @property
    def not_after(self) -> datetime.datetime:
        return x509.load_pem_x509_certificate(self.cert).not_valid_after_utc


@dataclass(frozen=True)
class Target:
    """Where the certificate is kept and used; the flags ``--webhook-*`` of the operator."""

    namespace: str  # the operator's own namespace: the Secret and the Service are there
    service: str
    secret: str
    config_name: str  # the MutatingWebhookConfiguration whose caBundle is set

    @property
    def dns_names(self) -> tuple[str, ...]:
        return service_dns_names(self.service, self.namespace)


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str


# ---- pure: certificates ------------------------------------------------------------------


def service_dns_names(service: str, namespace: str) -> tuple[str, ...]:
    """The names a Service answers to; the API server calls ``<service>.<namespace>.svc``."""
    return (service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local")


def issue(
    dns_names: Sequence[str],
    *,
    now: datetime.datetime | None = None,
    validity: datetime.timedelta = datetime.timedelta(days=DEFAULT_VALIDITY_DAYS),
) -> ServingCertificate:
    """A fresh CA and a serving certificate for *dns_names* signed by it (ECDSA P-256)."""
    if not dns_names:
        raise ValueError("a serving certificate needs at least one DNS name")
    start = (now or _utcnow()) - CLOCK_SKEW
    end = start + CLOCK_SKEW + validity
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _cn(f"{dns_names[0]}-ca"))])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    common_name = next((n for n in dns_names if n.endswith(".svc")), dns_names[0])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _cn(common_name))]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return ServingCertificate(
        cert=cert.public_bytes(pem),
        key=key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
        ca=ca.public_bytes(pem),
    )


def _cn(name: str) -> str:
    # X.509 caps a common name at 64 characters; clients match the SANs, never the CN.
    return name[:64]


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign, key_cert_sign=cert_sign, crl_sign=cert_sign,
        content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, encipher_only=False, decipher_only=False,
    )


def problems(
    tls: ServingCertificate,
    dns_names: Sequence[str],
    *,
    now: datetime.datetime | None = None,
    min_remaining: datetime.timedelta = MIN_REMAINING,
) -> list[str]:
    """Why *tls* cannot serve *dns_names* for at least *min_remaining* (empty when it can)."""
    now = now or _utcnow()
    try:
        cert = x509.load_pem_x509_certificate(tls.cert)
        ca = x509.load_pem_x509_certificate(tls.ca)
    except ValueError:
        return ["tls.crt or ca.crt is not a PEM certificate"]
    try:
        key = serialization.load_pem_private_key(tls.key, password=None)
    except (ValueError, TypeError):
        return ["tls.key is not an unencrypted PEM private key"]
    found = []
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError) as exc:  # InvalidSignature has no text
        found.append(f"tls.crt is not signed by ca.crt ({type(exc).__name__})")
    if _spki(key.public_key()) != _spki(cert.public_key()):
        found.append("tls.key does not belong to tls.crt")
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        named = set(sans.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        named = set()
    missing = [name for name in dns_names if name not in named]
    if missing:
        found.append(f"tls.crt does not name {', '.join(missing)}")
    for label, c in (("tls.crt", cert), ("ca.crt", ca)):
        if c.not_valid_before_utc > now + CLOCK_SKEW:
            found.append(f"{label} is not valid before {c.not_valid_before_utc:%Y-%m-%dT%H:%M}Z")
        if c.not_valid_after_utc - now < min_remaining:
            found.append(f"{label} expires on {c.not_valid_after_utc:%Y-%m-%d} "
                         f"(less than {min_remaining.days} days left)")
    return found


def _spki(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo))


def from_secret(secret: Mapping[str, Any]) -> ServingCertificate | None:
    """The certificate a Secret holds, or ``None`` if a key is missing or not base64."""
    data = secret.get("data") or {}
    try:
        values = [base64.b64decode(data[k], validate=True) for k in (CERT_FILE, KEY_FILE, CA_FILE)]
    except (KeyError, TypeError, binascii.Error):
        return None
    return ServingCertificate(cert=values[0], key=values[1], ca=values[2])


def decide(
    secret: Mapping[str, Any] | None,
    dns_names: Sequence[str],
    *,
    now: datetime.datetime | None = None,
) -> Decision:
    """Create when there is no Secret, reuse a certificate good for more than 30 days,
    rotate anything else."""
    if secret is None:
        return Decision("create", "no Secret yet")
    tls = from_secret(secret)
    if tls is None:
        return Decision("rotate", f"the Secret lacks {CERT_FILE}, {KEY_FILE} or {CA_FILE}")
    found = problems(tls, dns_names, now=now)
    return Decision("rotate", "; ".join(found)) if found else Decision("reuse", "valid")


def is_managed(secret: Mapping[str, Any]) -> bool:
    labels = (secret.get("metadata") or {}).get("labels") or {}
    return bool(labels.get(MANAGED_BY_LABEL) == MANAGER)


def secret_body(target: Target, tls: ServingCertificate) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": target.secret,
            "namespace": target.namespace,
            "labels": {
                MANAGED_BY_LABEL: MANAGER,
                "app.kubernetes.io/part-of": "amfs",
                "app.kubernetes.io/component": "webhook",
            },
            # For people: when the operator will replace it (30 days before this).
            "annotations": {EXPIRES_ANNOTATION: f"{tls.not_after:%Y-%m-%dT%H:%M:%SZ}"},
        },
        "data": {
            CERT_FILE: base64.b64encode(tls.cert).decode(),
            KEY_FILE: base64.b64encode(tls.key).decode(),
            CA_FILE: base64.b64encode(tls.ca).decode(),
        },
    }


# ---- pure: the caBundle ------------------------------------------------------------------


def ca_bundle_patch(config: Mapping[str, Any], ca: bytes, target: Target) -> list[dict[str, Any]]:
    """A JSON patch setting the caBundle of the webhooks that call *target*'s Service.

    A JSON patch, not a merge patch: a merge patch replaces the whole ``webhooks`` list,
    selectors and rules included. Each change is guarded by a ``test`` of the webhook's
    name, so a list reordered in between makes the patch fail instead of hitting
    another webhook. Empty when every caBundle is already *ca*."""
    encoded = base64.b64encode(ca).decode()
    ops: list[dict[str, Any]] = []
    matched = False
    for index, hook in enumerate(config.get("webhooks") or []):
        client = hook.get("clientConfig") or {}
        service = client.get("service") or {}
        if (service.get("name"), service.get("namespace")) != (target.service, target.namespace):
            continue
        matched = True
        if client.get("caBundle") != encoded:
            ops.append({"op": "test", "path": f"/webhooks/{index}/name", "value": hook["name"]})
            ops.append({"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle",
                        "value": encoded})
    if not matched:
        raise WebhookConfigError(
            f"MutatingWebhookConfiguration {target.config_name} has no webhook calling Service "
            f"{target.namespace}/{target.service} (check --webhook-config-name, "
            "--webhook-service and --webhook-namespace)"
        )
    return ops


# ---- with the Kubernetes API -------------------------------------------------------------


def ensure_secret(
    kube: Kube,
    target: Target,
    *,
    validity: datetime.timedelta = datetime.timedelta(days=DEFAULT_VALIDITY_DAYS),
    now: datetime.datetime | None = None,
) -> ServingCertificate:
    """The certificate in *target*'s Secret: created if absent, reused if good for more than
    30 days, rotated otherwise. Refuses a Secret of that name the operator did not make."""
    where = f"{target.namespace}/{target.secret}"
    for _ in range(WRITE_ATTEMPTS):
        secret = kube.get_secret(target.namespace, target.secret)
        if secret is not None and not is_managed(secret):
            raise WebhookConfigError(
                f"Secret {where} exists but was not made by the operator (label "
                f"{MANAGED_BY_LABEL}={MANAGER} missing); it is left alone: delete it, or "
                "name another Secret with --webhook-secret"
            )
        decision = decide(secret, target.dns_names, now=now)
        if decision.action == "reuse":
            tls = from_secret(secret or {})
            assert tls is not None  # decide() reuses only a complete Secret
            log.info("event=webhook_certificate action=reuse secret=%s not_after=%s",
                     where, f"{tls.not_after:%Y-%m-%d}")
            return tls
        tls = issue(target.dns_names, now=now, validity=validity)
        body = secret_body(target, tls)
        try:
            if secret is None:
                kube.create(body)
            else:
                # Optimistic concurrency: another replica's rotation in between wins.
                body["metadata"]["resourceVersion"] = secret["metadata"]["resourceVersion"]
                kube.replace(body)
        except KubeError as exc:
            if exc.status != 409:
                raise
            log.info("event=webhook_certificate action=%s secret=%s result=conflict "
                     "(another replica wrote it first; reading theirs)", decision.action, where)
            continue
        log.info("event=webhook_certificate action=%s secret=%s reason=%r not_after=%s",
                 decision.action, where, decision.reason, f"{tls.not_after:%Y-%m-%d}")
        return tls
    raise WebhookConfigError(f"Secret {where} kept changing while the operator wrote it "
                             f"({WRITE_ATTEMPTS} attempts); is another program writing it?")


def install_ca_bundle(kube: Kube, target: Target, ca: bytes) -> bool:
    """Put *ca* into the caBundle of *target*'s webhooks; returns whether it changed."""
    config = kube.get_webhook_configuration(target.config_name)
    if config is None:
        raise WebhookConfigError(
            f"MutatingWebhookConfiguration {target.config_name} not found (--webhook-config-name): "
            "apply the chart's webhook manifest (deploy/04-webhook.yaml) first"
        )
    ops = ca_bundle_patch(config, ca, target)
    if ops:
        kube.patch_webhook_configuration(target.config_name, ops)
    log.info("event=webhook_ca_bundle config=%s result=%s", target.config_name,
             "patched" if ops else "unchanged")
    return bool(ops)


def write_files(directory: str | os.PathLike[str], tls: ServingCertificate) -> None:
    """tls.crt and tls.key for kopf's server, each replaced atomically (kopf reloads on change).

    The key is readable by the operator's user only."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        _write_atomically(path / KEY_FILE, tls.key, mode=0o600)
        _write_atomically(path / CERT_FILE, tls.cert, mode=0o644)
    except OSError as exc:
        raise WebhookConfigError(
            f"cannot write the webhook certificate to {path} ({exc.strerror}): --webhook-cert-dir "
            "must be a writable directory (the chart mounts an emptyDir there)"
        ) from None


def _write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def provision(
    kube: Kube,
    target: Target,
    *,
    cert_dir: str | os.PathLike[str],
    validity: datetime.timedelta = datetime.timedelta(days=DEFAULT_VALIDITY_DAYS),
    now: datetime.datetime | None = None,
) -> ServingCertificate:
    """Everything the operator does at start-up before it serves the webhook."""
    tls = ensure_secret(kube, target, validity=validity, now=now)
    write_files(cert_dir, tls)
    install_ca_bundle(kube, target, tls.ca)
    return tls


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
