"""One line per event, text or JSON."""

from __future__ import annotations

import io
import json
import logging

import pytest

from amfs_sidecar import logs
from amfs_sidecar.logs import fields


def emit(fmt: logs.LogFormat, exc: bool = False) -> str:
    stream = io.StringIO()
    logs.configure(fmt, "INFO", stream)
    log = logging.getLogger("amfs_sidecar.test")
    if exc:
        try:
            raise RuntimeError("boom\nsecond line")
        except RuntimeError:
            log.exception("failed", extra=fields(key="a b"))
    else:
        log.info("write", extra=fields(entity_path="svc", key="has space", version=2))
    return stream.getvalue()


def test_text_lines_are_key_value(restore_logging: None) -> None:
    line = emit("text")
    assert line.count("\n") == 1
    assert " INFO amfs_sidecar.test write entity_path=svc key=\"has space\" version=2" in line


def test_json_lines_parse(restore_logging: None) -> None:
    doc = json.loads(emit("json"))
    assert {k: doc[k] for k in ("level", "logger", "event", "entity_path", "version")} == {
        "level": "INFO", "logger": "amfs_sidecar.test", "event": "write",
        "entity_path": "svc", "version": 2}
    assert doc["ts"].endswith("Z")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_traceback_stays_on_one_line(restore_logging: None, fmt: logs.LogFormat) -> None:
    out = emit(fmt, exc=True)
    assert out.count("\n") == 1 and "RuntimeError" in out


def test_unknown_format_is_refused(restore_logging: None) -> None:
    with pytest.raises(ValueError, match="text or json"):
        logs.configure("xml")  # type: ignore[arg-type]
