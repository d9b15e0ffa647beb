"""The amfs-operator command line and the kopf settings it builds."""

from __future__ import annotations

from pathlib import Path

import kopf
import pytest

from amfs_operator.cli import FINALIZER, build_settings, injection_off_reason, parse_args
from amfs_operator.handlers import build_registry


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AMFS_SIDECAR_IMAGE", raising=False)
    monkeypatch.delenv("AMFS_SIDECAR_MODE", raising=False)
    config = parse_args([])
    assert config.namespaces == ()  # all namespaces
    assert (config.metrics_port, config.health_port, config.webhook_port) == (9465, 8080, 9443)
    assert config.liveness == "http://0.0.0.0:8080/healthz"
    assert config.probe_interval == 300
    assert config.sidecar_image == "ghcr.io/amfs-k8s/amfs:0.1.0"
    assert config.sidecar_mode == "native"
    assert config.webhook_cert_dir is None  # the webhook runs only if a certificate is there


def test_ports_and_address_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMFS_OPERATOR_METRICS_PORT", "19465")
    monkeypatch.setenv("AMFS_OPERATOR_HEALTH_PORT", "18080")
    monkeypatch.setenv("AMFS_OPERATOR_LISTEN_HOST", "127.0.0.1")
    config = parse_args([])
    assert (config.metrics_port, config.health_port) == (19465, 18080)
    assert config.liveness == "http://127.0.0.1:18080/healthz"
    assert parse_args(["--metrics-port", "1"]).metrics_port == 1  # a flag wins
    monkeypatch.setenv("AMFS_OPERATOR_METRICS_PORT", "lots")
    with pytest.raises(SystemExit, match="AMFS_OPERATOR_METRICS_PORT='lots' is not a port"):
        parse_args([])


def test_injection_is_off_only_without_any_certificate_flag(tmp_path: Path) -> None:
    assert injection_off_reason(parse_args([])) == \
        "no webhook certificate in /etc/amfs/webhook-certs"
    assert injection_off_reason(parse_args(["--webhook-port", "0"])) == "--webhook-port is 0"
    # Given flags (the chart's) keep a missing certificate a start-up error.
    assert injection_off_reason(parse_args(["--webhook-cert-dir", str(tmp_path)])) is None
    assert injection_off_reason(parse_args(["--webhook-cert-source", "self-signed",
                                            "--webhook-namespace", "amfs-system"])) is None


def test_flags_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMFS_SIDECAR_IMAGE", "registry.local/amfs:dev")
    monkeypatch.setenv("AMFS_SIDECAR_MODE", "container")
    config = parse_args(["-n", "a", "--namespace", "b", "--metrics-port", "0",
                         "--health-port", "0", "--log-format", "json", "--probe-interval", "30"])
    assert config.namespaces == ("a", "b")
    assert config.metrics_port == 0 and config.liveness is None
    assert config.log_format == "json" and config.probe_interval == 30
    assert (config.sidecar_image, config.sidecar_mode) == ("registry.local/amfs:dev", "container")


@pytest.mark.parametrize("argv", [["-A", "-n", "a"], ["--probe-interval", "0"],
                                  ["--log-format", "xml"], ["--sidecar-mode", "magic"]])
def test_bad_flags_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)


def test_settings_keep_kopf_state_out_of_status_and_watches_alive() -> None:
    settings = build_settings(parse_args(["--watch-timeout", "120"]))
    assert settings.persistence.finalizer == FINALIZER
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert isinstance(settings.persistence.diffbase_storage, kopf.AnnotationsDiffBaseStorage)
    assert settings.watching.server_timeout == 120
    assert settings.watching.client_timeout is not None and settings.watching.client_timeout > 120
    assert settings.posting.reporting_component == "amfs-operator"


def test_registry_wires_every_handler() -> None:
    registry = build_registry(probe_interval=60)
    handlers = [h.id for h in registry._changing.get_all_handlers()]
    assert {"reconcile_memory", "finalize_memory"} <= set(handlers)
    timers = list(registry._spawning.get_all_handlers())
    assert [(t.id, t.interval) for t in timers] == [("reprobe", 60)]
    assert {h.id for h in registry._indexing.get_all_handlers()} == {
        "memory_claims", "memories_by_secret", "memory_pods"}
    assert [h.id for h in registry._watching.get_all_handlers()] == [
        "follow_source_secret", "follow_consumer", "explain_label"]
