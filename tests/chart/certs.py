"""The webhook certificate as the chart generates it, written where kopf's server reads it."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from amfs_operator import webhook
from scripts.render_manifests import render_chart


def chart_certificate(directory: Path) -> bytes:
    """tls.crt/tls.key from the chart's webhook template; returns the caBundle (PEM)."""
    rendered = render_chart()
    docs = [d for d in yaml.safe_load_all(rendered["amfs/templates/webhook.yaml"]) if d]
    secret = next(d for d in docs if d["kind"] == "Secret")
    config = next(d for d in docs if d["kind"] == "MutatingWebhookConfiguration")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / webhook.CERT_FILE).write_bytes(base64.b64decode(secret["data"]["tls.crt"]))
    (directory / webhook.KEY_FILE).write_bytes(base64.b64decode(secret["data"]["tls.key"]))
    assert config["webhooks"][0]["clientConfig"]["service"]["path"] == "/" + webhook.HANDLER_ID
    return base64.b64decode(config["webhooks"][0]["clientConfig"]["caBundle"])
