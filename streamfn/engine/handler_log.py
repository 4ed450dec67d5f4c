"""Handler failures as log lines an operator can act on: the full traceback, the pipeline, shard,
batch bounds, attempt and the request id the handler saw; import failures too.

A batch that keeps failing is retried until it succeeds, so the same traceback comes back at every
retry, on every shard that meets the same bad record. Each failure still gets its line, but an
identical traceback (same exception type and frames, whatever its message) is printed whole only
the first time and then at most once per ``FULL_EVERY`` seconds per pipeline; the lines between
carry its ``traceback_id`` and how many repeats went without it.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import HandlerError

log = logging.getLogger("streamfn.handler")

#: Seconds between two whole copies of the same traceback (per pipeline).
FULL_EVERY = 60.0
#: Distinct tracebacks remembered; the least recently seen is forgotten first.
REMEMBERED = 1024

_PACKAGE = str(Path(__file__).resolve().parent.parent)
_IMPORTLIB = str(Path(importlib.__file__).parent)


class TracebackLimiter:
    """Decides which occurrences of a traceback are printed whole (see the module docstring)."""

    def __init__(self, every: float = FULL_EVERY, *, clock: Callable[[], float] = time.monotonic,
                 remembered: int = REMEMBERED) -> None:
        self.every = every
        self._clock = clock
        self._remembered = remembered
        #: key -> (when it was last printed whole, repeats since then)
        self._seen: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()

    def admit(self, key: tuple[str, str]) -> tuple[bool, int]:
        """``(whole, repeats)``: print this occurrence whole or not, and how many occurrences went
        without the traceback since it was last printed whole (including this one when not whole)."""
        now = self._clock()
        seen = self._seen.get(key)
        if seen is None or now - seen[0] >= self.every:
            self._seen[key] = (now, 0)
            self._seen.move_to_end(key)
            while len(self._seen) > self._remembered:
                self._seen.popitem(last=False)
            return True, 0 if seen is None else seen[1]
        self._seen[key] = (seen[0], seen[1] + 1)
        self._seen.move_to_end(key)
        return False, seen[1] + 1


_limiter = TracebackLimiter()


def user_traceback(error: BaseException) -> traceback.TracebackException:
    """The traceback of ``error`` without streamfn's own leading frames (the thread or task that
    called the handler): it starts in the user's code."""
    shown = traceback.TracebackException.from_exception(error)
    frames = list(shown.stack)
    while len(frames) > 1 and (frames[0].filename or "").startswith(_PACKAGE):
        frames.pop(0)
    frames = [f for f in frames if not (f.filename or "").startswith(("<frozen importlib", _IMPORTLIB))] or frames
    shown.stack = traceback.StackSummary.from_list(frames)
    return shown


def fingerprint(error: BaseException, shown: traceback.TracebackException) -> str:
    """A short id of a traceback's shape: exception type and frames, not its message."""
    digest = hashlib.blake2b(digest_size=6)
    digest.update(f"{type(error).__module__}.{type(error).__qualname__}".encode())
    for frame in shown.stack:
        digest.update(f"|{frame.filename}:{frame.lineno}:{frame.name}".encode())
    return digest.hexdigest()


def log_handler_failure(error: HandlerError, fields: dict[str, Any],
                        limiter: TracebackLimiter | None = None) -> None:
    """One error line for a failed call; with the handler's traceback (trimmed to its own frames)
    when it raised, unless the same traceback was printed whole less than a minute ago."""
    cause = error.__cause__
    extra = dict(fields, error=str(error))
    if cause is None:  # a timeout or an answer streamfn cannot use: no traceback of the handler's
        log.error("handler failed", extra=extra)
        return
    shown = user_traceback(cause)
    trace_id = fingerprint(cause, shown)
    whole, repeats = (limiter or _limiter).admit((str(fields.get("pipeline")), trace_id))
    extra["traceback_id"] = trace_id
    if whole:
        if repeats:
            extra["repeats_without_traceback"] = repeats
        extra["exception"] = "".join(shown.format()).rstrip("\n")
    else:
        extra["traceback_repeat"] = repeats
    log.error("handler failed", extra=extra)


def log_import_failure(error: BaseException, *, handler: str, file: str | None = None) -> None:
    """The traceback of a handler module that failed to import (a syntax error, an exception raised
    at import time), trimmed to the user's frames; the caller still reports the error itself."""
    cause = error.__cause__
    while isinstance(cause, HandlerError) and cause.__cause__ is not None:
        cause = cause.__cause__
    if cause is None or (isinstance(cause, ModuleNotFoundError) and cause.name == handler.partition(":")[0]):
        return  # nothing to show beyond the message: the module does not exist, or no exception
    shown = user_traceback(cause)
    log.error("handler import failed", extra={
        "handler": handler, "file": file, "exception": "".join(shown.format()).rstrip("\n")})
