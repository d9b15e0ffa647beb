"""One line per event: ``key=value`` text or JSON (``--log-format json``).

Callers log an event name and fields: ``log.info("write", extra=fields(entity_path=…))``.
Only names, versions, counts and durations are ever passed as fields: never
credentials, never entry values.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

LogFormat = Literal["text", "json"]

_FIELDS = "amfs_fields"
# LogRecord attributes that are not user fields.
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", _FIELDS}


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` for a log call: structured fields rendered by either formatter."""
    return {_FIELDS: values}


def _record_fields(record: logging.LogRecord) -> dict[str, Any]:
    values = dict(getattr(record, _FIELDS, {}) or {})
    for name, value in record.__dict__.items():
        if name not in _RESERVED and not name.startswith("_"):
            values.setdefault(name, value)
    return values


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    """``2024-05-01T10:00:00.000Z INFO amfs_sidecar.api write entity_path=a key=b``."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, record.name, record.getMessage()]
        parts += [f"{k}={_text_value(v)}" for k, v in _record_fields(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            # Keep one event on one line: the traceback is folded into a field.
            line += " exc=" + json.dumps(self.formatException(record.exc_info))
        return line.replace("\n", "\\n")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in _record_fields(record).items():
            doc.setdefault(key, value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def configure(fmt: LogFormat = "text", level: str = "INFO", stream: TextIO | None = None) -> None:
    """Route every logger to one handler on *stream* (stderr) in *fmt*."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format {fmt!r} is not supported (text or json)")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # botocore logs request details (headers, sometimes signed URLs) at DEBUG.
    for noisy in ("botocore", "boto3", "urllib3", "aiohttp.access", "werkzeug"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
