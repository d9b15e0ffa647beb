"""``amfs-operator``: ``kopf run`` with this operator's handlers and sensible settings.

    amfs-operator                          # every namespace, your kubeconfig
    amfs-operator -n team-a -n team-b      # only these namespaces
    amfs-operator --metrics-port 9465 --health-port 8080 --log-format json

Memories with credentials.serviceAccount are never probed or deleted with the
operator's own S3 identity unless --allow-operator-identity says so.

Sidecar injection needs the webhook's certificate: mounted (--webhook-cert-source
mounted, the default: Helm, cert-manager or you put tls.crt and tls.key into
--webhook-cert-dir), or issued by the operator itself at start-up
(--webhook-cert-source self-signed): kept in the Secret --webhook-secret of
--webhook-namespace, written to --webhook-cert-dir, and its CA put into the caBundle
of the MutatingWebhookConfiguration --webhook-config-name. Without any webhook flag
and without a certificate in /etc/amfs/webhook-certs (a laptop, outside the chart)
the operator reconciles memories and says in one line that injection is off.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import re
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import kopf

from amfs_operator import metrics, webhook, webhook_certs
from amfs_operator.exceptions import WebhookConfigError
from amfs_operator.handlers import build_registry
from amfs_operator.kube import Kube
from amfs_operator.probe import ClientCache
from amfs_operator.reconcile import Runtime
from amfs_operator.resources import DEFAULT_IMAGE, SidecarMode

log = logging.getLogger(__name__)

# Their DEBUG lines carry request headers: Authorization names the access key id (and a
# session token would follow). They never log below WARNING, whatever --debug says.
SIGNING_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer")

DEFAULT_METRICS_PORT = 9465
DEFAULT_HEALTH_PORT = 8080
DEFAULT_WEBHOOK_PORT = 9443
DEFAULT_WEBHOOK_CERT_DIR = "/etc/amfs/webhook-certs"
DEFAULT_PROBE_INTERVAL = 300.0
DEFAULT_WATCH_TIMEOUT = 300.0
FINALIZER = "amfs.dev/finalizer"
# The chart's names for release "amfs" (what deploy/ uses).
DEFAULT_WEBHOOK_SERVICE = "amfs-webhook"
DEFAULT_WEBHOOK_SECRET = "amfs-webhook-tls"
DEFAULT_WEBHOOK_CONFIG_NAME = "amfs-sidecar-injector"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

CertSource = Literal["mounted", "self-signed"]


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()  # empty: the whole cluster
    metrics_port: int = DEFAULT_METRICS_PORT  # 0: no metrics endpoint
    health_port: int = DEFAULT_HEALTH_PORT  # 0: no liveness endpoint
    listen_host: str = "0.0.0.0"
    probe_interval: float = DEFAULT_PROBE_INTERVAL
    deletion_retry: float = 30.0
    watch_timeout: float = DEFAULT_WATCH_TIMEOUT
    workers: int = 8
    log_format: str = "text"
    verbose: bool = False
    debug: bool = False
    # serviceAccount memories may be probed and deleted with the operator's own S3 identity.
    allow_operator_identity: bool = False
    # For the injection webhook (kopf's webhook server) and the sidecar it injects.
    webhook_port: int = DEFAULT_WEBHOOK_PORT  # 0: no injection webhook
    # None: DEFAULT_WEBHOOK_CERT_DIR if a certificate is there, else injection is off.
    webhook_cert_dir: str | None = None
    # self-signed: the operator issues the certificate (webhook_certs) into webhook_cert_dir.
    webhook_cert_source: CertSource = "mounted"
    webhook_namespace: str | None = None  # the operator's own; required for self-signed
    webhook_service: str = DEFAULT_WEBHOOK_SERVICE
    webhook_secret: str = DEFAULT_WEBHOOK_SECRET
    webhook_config_name: str = DEFAULT_WEBHOOK_CONFIG_NAME
    webhook_cert_validity_days: int = webhook_certs.DEFAULT_VALIDITY_DAYS
    sidecar_image: str = DEFAULT_IMAGE
    sidecar_mode: SidecarMode = "native"

    @property
    def liveness(self) -> str | None:
        return f"http://{self.listen_host}:{self.health_port}/healthz" if self.health_port else None

    @property
    def cert_dir(self) -> str:
        return self.webhook_cert_dir or DEFAULT_WEBHOOK_CERT_DIR

    @property
    def webhook_target(self) -> webhook_certs.Target:
        if not self.webhook_namespace:
            raise WebhookConfigError(
                "--webhook-namespace (or AMFS_OPERATOR_NAMESPACE) is required with "
                "--webhook-cert-source self-signed"
            )
        return webhook_certs.Target(
            namespace=self.webhook_namespace, service=self.webhook_service,
            secret=self.webhook_secret, config_name=self.webhook_config_name,
        )


def parse_args(argv: Sequence[str] | None = None) -> OperatorConfig:
    env = os.environ
    parser = argparse.ArgumentParser(prog="amfs-operator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="serve every namespace (the default)")
    scope.add_argument("-n", "--namespace", dest="namespaces", action="append", default=[],
                       help="serve only this namespace (repeatable)")
    parser.add_argument("--metrics-port", type=int,
                        default=_int_env("AMFS_OPERATOR_METRICS_PORT", DEFAULT_METRICS_PORT),
                        help="Prometheus /metrics port (env AMFS_OPERATOR_METRICS_PORT; "
                             "default %(default)s; 0 disables)")
    parser.add_argument("--health-port", type=int,
                        default=_int_env("AMFS_OPERATOR_HEALTH_PORT", DEFAULT_HEALTH_PORT),
                        help="liveness endpoint /healthz port (env AMFS_OPERATOR_HEALTH_PORT; "
                             "default %(default)s; 0 disables)")
    parser.add_argument("--listen-host", default=env.get("AMFS_OPERATOR_LISTEN_HOST", "0.0.0.0"),
                        help="address of the metrics, health and webhook endpoints "
                             "(env AMFS_OPERATOR_LISTEN_HOST; default %(default)s)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--webhook-port", type=int, default=DEFAULT_WEBHOOK_PORT,
                        help="HTTPS port of the sidecar-injection webhook "
                             "(default %(default)s; 0 disables)")
    parser.add_argument("--webhook-cert-dir", default=None,
                        help="tls.crt and tls.key of the webhook server; written there with "
                             "--webhook-cert-source self-signed. Given, a missing certificate "
                             f"is an error; not given, {DEFAULT_WEBHOOK_CERT_DIR} is used if it "
                             "holds one, else injection is off")
    parser.add_argument("--webhook-cert-source", choices=("mounted", "self-signed"),
                        default="mounted",
                        help="mounted: the certificate is in --webhook-cert-dir; self-signed: "
                             "the operator issues it, keeps it in --webhook-secret and sets the "
                             "caBundle of --webhook-config-name (default %(default)s)")
    parser.add_argument("--webhook-namespace", default=env.get("AMFS_OPERATOR_NAMESPACE"),
                        help="the operator's namespace, where the webhook Service and Secret "
                             "are (env AMFS_OPERATOR_NAMESPACE; required for self-signed)")
    parser.add_argument("--webhook-service", default=DEFAULT_WEBHOOK_SERVICE,
                        help="the webhook's Service; the certificate names "
                             "SERVICE.NAMESPACE.svc (default %(default)s)")
    parser.add_argument("--webhook-secret", default=DEFAULT_WEBHOOK_SECRET,
                        help="the Secret the operator keeps its certificate in "
                             "(default %(default)s)")
    parser.add_argument("--webhook-config-name", default=DEFAULT_WEBHOOK_CONFIG_NAME,
                        help="the MutatingWebhookConfiguration whose caBundle the operator "
                             "sets (default %(default)s)")
    parser.add_argument("--webhook-cert-validity-days", type=int,
                        default=webhook_certs.DEFAULT_VALIDITY_DAYS,
                        help="validity of a certificate the operator issues; it is replaced at "
                             "start-up once less than 30 days are left (default %(default)s)")
    parser.add_argument("--sidecar-image", default=env.get("AMFS_SIDECAR_IMAGE", DEFAULT_IMAGE),
                        help="image of the injected sidecar (env AMFS_SIDECAR_IMAGE; "
                             "default %(default)s)")
    parser.add_argument("--sidecar-mode", choices=("native", "container"),
                        default=env.get("AMFS_SIDECAR_MODE", "native"),
                        help="native: init container with restartPolicy Always (Kubernetes "
                             ">= 1.29); container: a regular container (env AMFS_SIDECAR_MODE)")
    parser.add_argument("--probe-interval", type=float,
                        default=float(env.get("AMFS_OPERATOR_PROBE_INTERVAL",
                                              DEFAULT_PROBE_INTERVAL)),
                        help="seconds between bucket re-probes of each memory "
                             "(env AMFS_OPERATOR_PROBE_INTERVAL; default %(default)s)")
    parser.add_argument("--deletion-retry", type=float, default=30.0,
                        help="seconds between attempts of a deletion that S3 blocks "
                             "(default %(default)s)")
    parser.add_argument("--watch-timeout", type=float, default=DEFAULT_WATCH_TIMEOUT,
                        help="server-side watch timeout in seconds; watches are re-opened "
                             "after it, so they never go quiet (default %(default)s)")
    parser.add_argument("--workers", type=int, default=8,
                        help="threads running handlers (default %(default)s)")
    parser.add_argument("--allow-operator-identity", action="store_true",
                        help="probe, and apply deletionPolicy: Delete to, memories with "
                             "credentials.serviceAccount using the operator's own S3 identity "
                             "(its pod's credential chain); off by default: such memories are "
                             "not probed and Delete is refused for them")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true",
                        help="kopf and the operator at DEBUG; boto3, botocore and urllib3 stay "
                             "at WARNING (their DEBUG lines carry signed request headers)")
    args = parser.parse_args(argv)
    if args.probe_interval <= 0:
        parser.error("--probe-interval must be greater than zero")
    for problem in _webhook_flag_problems(args):
        parser.error(problem)
    return OperatorConfig(
        namespaces=tuple(args.namespaces),
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        listen_host=args.listen_host,
        probe_interval=args.probe_interval,
        deletion_retry=args.deletion_retry,
        watch_timeout=args.watch_timeout,
        workers=args.workers,
        log_format=args.log_format,
        verbose=args.verbose,
        debug=args.debug,
        allow_operator_identity=args.allow_operator_identity,
        webhook_port=args.webhook_port,
        webhook_cert_dir=args.webhook_cert_dir,
        webhook_cert_source=args.webhook_cert_source,
        webhook_namespace=args.webhook_namespace or None,
        webhook_service=args.webhook_service,
        webhook_secret=args.webhook_secret,
        webhook_config_name=args.webhook_config_name,
        webhook_cert_validity_days=args.webhook_cert_validity_days,
        sidecar_image=args.sidecar_image,
        sidecar_mode=args.sidecar_mode,
    )


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"amfs-operator: env {name}={raw!r} is not a port number") from None


def _webhook_flag_problems(args: argparse.Namespace) -> list[str]:
    found = []
    names = (("--webhook-service", args.webhook_service, DNS_LABEL, 63, "a DNS label"),
             ("--webhook-namespace", args.webhook_namespace, DNS_LABEL, 63, "a DNS label"),
             ("--webhook-secret", args.webhook_secret, DNS_SUBDOMAIN, 253, "a DNS subdomain"),
             ("--webhook-config-name", args.webhook_config_name, DNS_SUBDOMAIN, 253,
              "a DNS subdomain"))
    for flag, value, pattern, limit, kind in names:
        if value is not None and (len(value) > limit or not pattern.match(value)):
            found.append(f"{flag} {value!r} is not {kind} (lowercase letters, digits, '-'"
                         f"{' and .' if pattern is DNS_SUBDOMAIN else ''}; at most {limit})")
    if args.webhook_cert_source == "self-signed":
        if not args.webhook_namespace:
            found.append("--webhook-namespace (or env AMFS_OPERATOR_NAMESPACE) is required "
                         "with --webhook-cert-source self-signed")
        if args.webhook_cert_validity_days <= webhook_certs.MIN_REMAINING.days:
            found.append(f"--webhook-cert-validity-days must be more than "
                         f"{webhook_certs.MIN_REMAINING.days} (a certificate with "
                         f"{webhook_certs.MIN_REMAINING.days} days or less left is replaced at "
                         "every start)")
    return found


def build_settings(config: OperatorConfig) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # Only declared status fields survive a real API server's pruning: keep kopf's own
    # bookkeeping in annotations, never in status.
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="amfs.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="amfs.dev", key="last-handled-configuration"
    )
    settings.posting.reporting_component = "amfs-operator"
    settings.posting.reporting_instance = socket.gethostname()
    settings.posting.event_name_prefix = "amfs-"
    settings.watching.server_timeout = config.watch_timeout
    settings.watching.client_timeout = config.watch_timeout + 30
    settings.watching.connect_timeout = 30
    settings.execution.max_workers = config.workers
    return settings


def injection_off_reason(config: OperatorConfig) -> str | None:
    """Why the webhook does not run, or ``None`` if it does.

    Only a start without any certificate flag may go without the webhook: given
    flags (the chart's) with a missing certificate stay a start-up error, because
    labelled pods are refused while the webhook is down."""
    if not config.webhook_port:
        return "--webhook-port is 0"
    if config.webhook_cert_source == "self-signed" or config.webhook_cert_dir is not None:
        return None
    if webhook.has_certificate(DEFAULT_WEBHOOK_CERT_DIR):
        return None
    return f"no webhook certificate in {DEFAULT_WEBHOOK_CERT_DIR}"


async def setup_webhook(
    config: OperatorConfig,
    registry: kopf.OperatorRegistry,
    settings: kopf.OperatorSettings,
    kube: Kube,
) -> None:
    """The certificate in place (self-signed: issued or reused, and published in the
    caBundle), then kopf's webhook server and the injection handler."""
    if config.webhook_cert_source == "self-signed":
        # The Kubernetes client is synchronous: keep it off the event loop.
        await asyncio.to_thread(
            webhook_certs.provision, kube, config.webhook_target,
            cert_dir=config.cert_dir,
            validity=datetime.timedelta(days=config.webhook_cert_validity_days),
        )
    webhook.setup(
        registry, settings,
        lookup=kube.get_memory,
        port=config.webhook_port,
        cert_dir=config.cert_dir,
        image=config.sidecar_image,
        mode=config.sidecar_mode,
        addr=config.listen_host,
    )


async def operate(
    config: OperatorConfig,
    *,
    stop_flag: threading.Event | asyncio.Event | None = None,
    ready_flag: threading.Event | asyncio.Event | None = None,
) -> None:
    """Run the operator until *stop_flag* is set (or a signal, in the main thread)."""
    runtime = Runtime(
        kube=Kube.from_environment(),
        s3=ClientCache(allow_operator_identity=config.allow_operator_identity),
        deletion_retry=config.deletion_retry,
    )
    server = metrics.serve(config.metrics_port, config.listen_host) if config.metrics_port else None
    log.info("event=operator_start namespaces=%s metrics_port=%s probe_interval=%s",
             ",".join(config.namespaces) or "*", config.metrics_port, config.probe_interval)
    registry = build_registry(probe_interval=config.probe_interval)
    settings = build_settings(config)
    try:
        off = injection_off_reason(config)
        if off is None:
            await setup_webhook(config, registry, settings, runtime.kube)
        else:
            log.log(
                logging.WARNING if config.webhook_port else logging.INFO,
                "event=injection_off reason=%r: sidecar injection is off, the operator only "
                "reconciles AMFSMemory resources; to inject, install the chart (helm install "
                "amfs charts/amfs), or run with --webhook-cert-source self-signed "
                "--webhook-namespace NAMESPACE, or --webhook-cert-dir DIR holding tls.crt and "
                "tls.key", off)
        await kopf.operator(
            registry=registry,
            settings=settings,
            memo=runtime,
            standalone=True,
            clusterwide=not config.namespaces,
            namespaces=config.namespaces,
            liveness_endpoint=config.liveness,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        runtime.kube.close()


def configure_logging(config: OperatorConfig) -> None:
    """kopf's logging at the requested level, with the signing libraries pinned."""
    kopf.configure(
        verbose=config.verbose,
        debug=config.debug,
        log_format=kopf.LogFormat.JSON if config.log_format == "json" else kopf.LogFormat.FULL,
    )
    for name in SIGNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_args(argv)
    configure_logging(config)
    asyncio.run(operate(config))


if __name__ == "__main__":
    main()
