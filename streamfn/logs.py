"""Structured logs on stderr: logfmt lines for people (``--log-format text``), one JSON object per line
with ``--log-format json``. In JSON mode nothing else is written to stderr (no progress bars)."""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any, Literal

import orjson

LogFormat = Literal["text", "json"]
LEVELS = ("debug", "info", "warning", "error", "critical")

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
#: A logfmt value that needs no quotes: no space, quote, '=', backslash or control character.
_BARE = re.compile(r"[^\s\"=\\\x00-\x1f\x7f]+")
_current: LogFormat = "text"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=repr).decode()


def logfmt_value(value: Any) -> str:
    """One value as logfmt: bare when it can be, else double-quoted with ``\\`` ``"`` and control
    characters escaped, so a traceback stays on its line."""
    text = value if isinstance(value, str) else orjson.dumps(value, default=repr).decode() \
        if isinstance(value, (list, dict, tuple)) else str(value)
    if text and _BARE.fullmatch(text):
        return text
    return orjson.dumps(text).decode()  # JSON string escaping is logfmt's: \" \\ \n \t \uXXXX


def logfmt_key(key: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]", "_", key)
    return cleaned or "_"


class TextFormatter(logging.Formatter):
    """``time=... level=info logger=streamfn.daemon msg=running pipelines=[...]``: valid logfmt."""

    def format(self, record: logging.LogRecord) -> str:
        pairs: dict[str, Any] = {"time": _timestamp(record), "level": record.levelname.lower(),
                                 "logger": record.name, "msg": record.getMessage()}
        extra = _fields(record)
        if record.exc_info:
            extra["exception"] = self.formatException(record.exc_info)
        for key, value in extra.items():
            name = logfmt_key(key)
            while name in pairs:  # never a duplicate key, even after cleaning
                name += "_"
            pairs[name] = value
        return " ".join(f"{key}={logfmt_value(value)}" for key, value in pairs.items())


def configure(fmt: LogFormat = "text", level: str = "INFO") -> None:
    global _current
    _current = fmt
    from .engine import capture  # the real stderr: a log line must never land in a handler call's output

    handler = logging.StreamHandler(capture.real_stream(sys.stderr))
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    capture.attach(handler)  # records a handler call emits are written in its block (engine/capture.py)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # Python warnings become log lines too, in the chosen format


def current_format() -> LogFormat:
    """The format ``configure`` chose: a progress bar is drawn only in ``text`` mode (and on a terminal)."""
    return _current


def say(level: int, message: str, **fields: Any) -> None:
    """A CLI message on stderr: ``error: message`` for people, a log line in JSON mode."""
    if _current == "json":
        logging.getLogger("streamfn.cli").log(level, message, extra=fields)
    else:
        sys.stderr.write(f"{logging.getLevelName(level).lower()}: {message}\n")
