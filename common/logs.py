"""Logging for the broker and worker daemons: text for people, JSON lines for machines.

Fields passed with `extra=` (request_id, method, code, duration_ms, session_id, ...)
become keys of the JSON object, or `key=value` pairs after a text line. Secrets never
reach a log call in the first place (see common/interceptors.py for what an RPC
line carries); nothing here tries to scrub them afterwards.

JSON lines: {"ts": "2025-01-02T03:04:05.678Z", "level": "info", "logger": "broker.rpc",
"msg": "rpc", "method": "/broker.v1.AuthorizationService/Authorize", "code": "OK", ...}
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any, TextIO

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


def _timestamp(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": _timestamp(record.created), "level": record.levelname.lower(),
                 "logger": record.name, "msg": record.getMessage()}
        for key, value in fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """`<time> <LEVEL> <logger> <message> key=value ...`"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        extra = fields(record)
        if extra:
            line += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return line


def configure(log_format: str, level: str, stream: TextIO | None = None) -> None:
    """Route every log record (and Python warnings) to one handler on stderr."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    if log_format == "json":
        # A crash must not be the one multi-line, non-JSON thing in the stream.
        sys.excepthook = _log_uncaught
        threading.excepthook = lambda args: _log_uncaught(
            args.exc_type, args.exc_value, args.exc_traceback)


def _log_uncaught(exc_type, exc_value, traceback) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc_value, traceback)
        return
    logging.getLogger("uncaught").critical("uncaught exception",
                                           exc_info=(exc_type, exc_value, traceback))
