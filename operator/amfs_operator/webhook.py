"""The sidecar-injection webhook: kopf's mutating admission handler and its TLS server.

Wiring, from the operator's start-up (``cli.py``)::

    webhook.setup(
        registry, settings,
        lookup=runtime.kube.get_memory,            # (namespace, name) -> body | None
        port=9443, cert_dir="/etc/amfs/webhook-certs",
        image=args.sidecar_image, mode=args.sidecar_mode,
    )

The chart owns the MutatingWebhookConfiguration (service, caBundle, selectors,
failurePolicy), so kopf only serves: ``settings.admission.managed`` stays unset.
The certificate in ``cert_dir`` is mounted (Helm, cert-manager, your own Secret) or,
with ``--webhook-cert-source self-signed``, issued by the operator before this runs
(:mod:`amfs_operator.webhook_certs`, which also sets that configuration's caBundle).
kopf routes a request to the handler whose id is the URL path; the chart's
``clientConfig.service.path`` is ``/`` + :data:`HANDLER_ID`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import kopf

from amfs_operator import injection
from amfs_operator.exceptions import InjectionError, WebhookConfigError
from amfs_operator.injection import InjectionSettings

log = logging.getLogger(__name__)

HANDLER_ID = "amfs-inject-sidecar"
DEFAULT_PORT = 9443
DEFAULT_CERT_DIR = "/etc/amfs/webhook-certs"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"

MemoryLookup = Callable[[str, str], Mapping[str, Any] | None]


# ---- the handler -------------------------------------------------------------------------


def mutate_pod(
    body: kopf.Body,
    patch: kopf.Patch,
    warnings: list[str],
    *,
    settings: InjectionSettings,
    lookup: MemoryLookup,
    **_: Any,
) -> None:
    """Give a labelled pod the sidecar of the AMFSMemory it names, or refuse it."""
    pod = dict(body)
    namespace = body.metadata.namespace
    name = injection.requested_memory(pod)
    try:
        memory = lookup(namespace, name) if namespace and name else None
    except Exception as exc:
        # Raising denies the pod even under failurePolicy Ignore (the webhook did
        # answer), so the configured policy decides here too.
        if settings.failure_policy == "Fail":
            raise kopf.AdmissionError(
                f"cannot read AMFSMemory {namespace}/{name}: {exc}", code=503
            ) from None
        log.warning("event=sidecar_injection namespace=%s memory=%s result=lookup-failed "
                    "error=%s", namespace, name, exc)
        warnings.append(
            f"cannot read AMFSMemory {name!r} ({exc}); the pod starts without the amfs sidecar"
        )
        return
    try:
        result = injection.inject(pod, memory, settings, namespace=namespace)
    except InjectionError as exc:
        log.info("event=sidecar_injection namespace=%s pod=%s memory=%s result=refused "
                 "error=%s", namespace, _pod_name(body), name, exc)
        raise kopf.AdmissionError(str(exc), code=400) from None
    warnings.extend(result.warnings)
    if result.injected:
        patch.fns.append(_replace_with(result.pod))
    log.info(
        "event=sidecar_injection namespace=%s pod=%s memory=%s result=%s mode=%s",
        namespace, _pod_name(body), result.memory, result.reason, settings.mode,
    )


def _pod_name(body: kopf.Body) -> str:
    return str(body.metadata.name or body.metadata.get("generateName", ""))


def _replace_with(mutated: Mapping[str, Any]) -> Callable[[kopf.RawBody], None]:
    """A kopf patch function: kopf diffs the body before and after into a JSON patch."""

    def apply(body: kopf.RawBody) -> None:
        body.clear()  # type: ignore[attr-defined]
        body.update(mutated)  # type: ignore[typeddict-item]

    return apply


def register(
    registry: kopf.OperatorRegistry,
    *,
    settings: InjectionSettings,
    lookup: MemoryLookup,
) -> None:
    """Register the mutating handler for pods.

    The MutatingWebhookConfiguration sends only pods labelled ``amfs.dev/memory``; the
    handler takes every pod it is sent, so that one still opted in by the old
    annotation (an older webhook configuration) hears why it gets no sidecar."""

    def inject_sidecar(
        body: kopf.Body, patch: kopf.Patch, warnings: list[str], **kwargs: Any
    ) -> None:
        mutate_pod(body, patch, warnings, settings=settings, lookup=lookup, **kwargs)

    kopf.on.mutate(
        "", "v1", "pods",
        id=HANDLER_ID,
        operations=["CREATE"],
        side_effects=False,
        registry=registry,
    )(inject_sidecar)


# ---- the server --------------------------------------------------------------------------


def has_certificate(cert_dir: str | os.PathLike[str]) -> bool:
    return all((Path(cert_dir) / name).is_file() for name in (CERT_FILE, KEY_FILE))


def webhook_server(
    *,
    port: int = DEFAULT_PORT,
    cert_dir: str | os.PathLike[str] | None = DEFAULT_CERT_DIR,
    addr: str = "0.0.0.0",
    insecure: bool = False,
) -> kopf.WebhookServer:
    """kopf's webhook server with the mounted certificate (re-read when it rotates).

    ``insecure`` serves plain HTTP, for tests on loopback only.
    """
    if insecure:
        return kopf.WebhookServer(addr=addr, port=port, insecure=True)
    if cert_dir is None:
        raise WebhookConfigError("--webhook-cert-dir is required to serve the webhook over TLS")
    certfile, keyfile = Path(cert_dir) / CERT_FILE, Path(cert_dir) / KEY_FILE
    missing = [str(path) for path in (certfile, keyfile) if not path.is_file()]
    if missing:
        raise WebhookConfigError(
            f"webhook certificate not found: {', '.join(missing)} (mount the chart's webhook "
            "TLS Secret there, point --webhook-cert-dir at a directory with tls.crt and tls.key, "
            "or let the operator issue one with --webhook-cert-source self-signed)"
        )
    return kopf.WebhookServer(addr=addr, port=port, certfile=certfile, pkeyfile=keyfile)


def configure_server(settings: kopf.OperatorSettings, server: kopf.WebhookServer) -> None:
    settings.admission.server = server
    # The chart renders the MutatingWebhookConfiguration; kopf must not rewrite it
    # (it would drop the namespace selector) nor need RBAC for it.
    settings.admission.managed = None


def setup(
    registry: kopf.OperatorRegistry,
    settings: kopf.OperatorSettings,
    *,
    lookup: MemoryLookup,
    port: int = DEFAULT_PORT,
    cert_dir: str | os.PathLike[str] | None = DEFAULT_CERT_DIR,
    image: str | None = None,
    mode: str | None = None,
    addr: str = "0.0.0.0",
    insecure: bool = False,
) -> InjectionSettings:
    """Register the handler and configure kopf's webhook server; returns the settings used."""
    injection_settings = InjectionSettings.from_environment(image=image, mode=mode)
    configure_server(
        settings, webhook_server(port=port, cert_dir=cert_dir, addr=addr, insecure=insecure)
    )
    register(registry, settings=injection_settings, lookup=lookup)
    return injection_settings
