"""Each handler call's print and logging output, written whole and tagged, as Lambda does.

While a call runs, a context variable names it. ``sys.stdout`` and ``sys.stderr`` are replaced by
proxies that send a write made under that variable to the call's buffer, and a logging filter does
the same for records the handler's own loggers emit. Threads that run plain functions run in a copy
of the caller's context (engine/handler_threads.py), so the variable follows the call there. When
the call ends its output is written as one block of log lines (``START``, each line, ``END``,
``REPORT`` with the duration), tagged with pipeline, shard and request id, and never interleaved
with another call's block: blocks are written under one lock, each line through the log handler,
so in ``--log-format json`` every line is still one JSON object.

Modes (the pipeline's ``handler_output``):

- ``capture`` (default): a call that wrote nothing writes no frame (a failed one its error line
  only), so a quiet handler costs one context-variable set and reset per call and no log line;
- ``capture_all``: every call gets its ``START``/``END``/``REPORT`` lines, as on Lambda;
- ``off``: writes go straight through (lines of concurrent calls may mix).

A call that outlives its timeout (a plain function cannot be stopped) has its block written when
it timed out; what it writes later goes out line by line, marked ``late``.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar
from types import TracebackType
from typing import Any, Literal, TextIO

from ..errors import HandlerError
from ..handler_api import Context
from ..records import Record
from . import tracing
from .handler_log import log_handler_failure

Mode = Literal["capture", "capture_all", "off"]
MODES: tuple[Mode, ...] = ("capture", "capture_all", "off")

log = logging.getLogger("streamfn.handler")

#: Characters a call may buffer before its output so far is written (memory stays bounded).
MAX_BUFFERED = 256 * 1024

_current: ContextVar[CallScope | None] = ContextVar("streamfn_invocation", default=None)
#: Guards every call's buffer (writes are rare next to calls: one lock, none made per call).
_buffer_lock = threading.Lock()
#: Held while a block is written: blocks of different calls never mix.
_write_lock = threading.RLock()
_installed = False
_install_lock = threading.Lock()

#: A buffered line (stream name, text) or a handler's log record (the log handler it was meant for, record).
Item = tuple[str, str] | tuple[logging.Handler, logging.LogRecord]


class CallScope:
    """One handler call (``with CallScope(...): await slot.call(...)``): the call's output goes to its
    buffer while it runs, its ``invoke`` span is open, and a failure is logged with its traceback.

    Built for the common case, a call that writes nothing: no lock, buffer or field dict is made
    until a write or a failure needs one.
    """

    __slots__ = ("_buffer", "_partial", "_size", "_span", "_started", "_token", "closed", "context", "mode",
                 "pipeline", "records", "shard_id")

    def __init__(self, pipeline: str, shard_id: str, records: Sequence[Record], context: Context,
                 mode: Mode = "capture") -> None:
        self.pipeline = pipeline
        self.shard_id = shard_id
        self.records = records
        self.context = context
        self.mode = mode
        self.closed = False
        self._buffer: list[Item] | None = None
        self._partial: dict[str, str] | None = None
        self._size = 0
        self._span: AbstractContextManager[Any] | None = None

    def fields(self) -> dict[str, Any]:
        """What START and a failure line name: the call's batch and attempt."""
        records = self.records
        return {"pipeline": self.pipeline, "shard": self.shard_id, "attempt": self.context.attempt,
                "first_sequence": records[0].identifier if records else None,
                "last_sequence": records[-1].identifier if records else None, "records": len(records),
                "request_id": self.context.aws_request_id}

    def tags(self) -> dict[str, Any]:
        """What every line of the call carries (START names the batch, REPORT the duration)."""
        return {"pipeline": self.pipeline, "shard": self.shard_id, "request_id": self.context.aws_request_id}

    def __enter__(self) -> CallScope:
        if self.mode != "off":
            if not _installed:
                install()
            self._token = _current.set(self)
        if tracing.enabled():
            fields = self.fields()
            del fields["request_id"]  # made only when asked for: the handler may never ask
            self._span = span = tracing.span("invoke", fields)
            span.__enter__()
        self._started = time.perf_counter()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._span is not None:
            self._span.__exit__(kind, error, trace)
        failure = error if error is not None and isinstance(error, HandlerError) else None
        if self.mode == "off":
            if failure is not None:
                log_handler_failure(failure, self.fields())
            return
        _current.reset(self._token)
        with _buffer_lock:  # the common case inline: a quiet call that succeeded writes nothing
            if failure is None and self._buffer is None and self._partial is None and self.mode == "capture":
                self.closed = True
                return
        self.finish(time.perf_counter() - self._started, failure)

    def write(self, stream: str, text: str) -> None:
        """A write to ``sys.stdout`` or ``sys.stderr`` made by the call (from any thread)."""
        if not text:
            return
        with _buffer_lock:
            partial = self._partial
            if partial is None:
                partial = self._partial = {}
            *lines, rest = (partial.pop(stream, "") + text).split("\n")
            if rest:
                partial[stream] = rest
            late = self.closed
            items: list[Item]
            if late:
                items = [(stream, line) for line in lines]
            else:
                buffer = self._buffer
                if buffer is None:
                    buffer = self._buffer = []
                buffer.extend((stream, line) for line in lines)
                self._size += len(text)
                if self._size <= MAX_BUFFERED:
                    return
                items, self._buffer, self._size = buffer, [], 0  # a very talkative call: write what it has
        self._write(items, late=late)

    def take_record(self, handler: logging.Handler, record: logging.LogRecord) -> bool:
        """Keep a record for the block (False: not to be written now); after the call, tag it and let it go."""
        with _buffer_lock:
            if not self.closed:
                if self._buffer is None:
                    self._buffer = []
                self._buffer.append((handler, record))
                return False
        record.__dict__.update(self.tags(), late=True)
        return True

    def finish(self, seconds: float, error: HandlerError | None) -> None:
        """The call ended (or timed out): write its block."""
        with _buffer_lock:
            self.closed = True
            items, partial = self._buffer, self._partial
            self._buffer = self._partial = None
        if items is None and partial is None and self.mode != "capture_all":
            if error is not None:  # one line says it all (it names the call): no frame around it
                log_handler_failure(error, self.fields())
            return  # the common case: a quiet call that succeeded writes nothing
        items = items or []
        items.extend((stream, text) for stream, text in (partial or {}).items() if text)
        tags = self.tags()
        request = tags["request_id"]
        with _write_lock:
            log.info("START RequestId: %s", request, extra=self.fields())
            self._write(items, late=False, tags=tags)
            if error is not None:
                log_handler_failure(error, self.fields())
            log.info("END RequestId: %s", request, extra=tags)
            log.info("REPORT RequestId: %s Duration: %.2f ms", request, seconds * 1000.0,
                     extra=dict(tags, duration_ms=round(seconds * 1000.0, 3),
                                status="ok" if error is None else "error"))

    def _write(self, items: Sequence[Item], *, late: bool, tags: dict[str, Any] | None = None) -> None:
        if not items:
            return
        tags = tags or self.tags()
        if late:
            tags = dict(tags, late=True)
        with _write_lock:
            for first, second in items:
                if isinstance(first, logging.Handler):
                    assert isinstance(second, logging.LogRecord)
                    second.__dict__.update(tags)
                    first.handle(second)
                else:
                    log.info("%s", second, extra=dict(tags, stream=first))


class StreamProxy:
    """Stands in for ``sys.stdout`` or ``sys.stderr``: a write made during a handler call goes to the
    call's buffer, any other goes to the stream it replaced (``target``)."""

    def __init__(self, name: str, target: TextIO) -> None:
        self.name = name
        self.target = target

    def write(self, text: str) -> int:
        invocation = _current.get()
        if invocation is None:
            return self.target.write(text)
        invocation.write(self.name, text)
        return len(text)

    def writelines(self, lines: Sequence[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if _current.get() is None:
            self.target.flush()

    def isatty(self) -> bool:
        return self.target.isatty()

    def fileno(self) -> int:
        return self.target.fileno()

    @property
    def encoding(self) -> str:
        return self.target.encoding

    def __getattr__(self, name: str) -> Any:  # the rest of the file interface (buffer, errors, ...)
        return getattr(self.target, name)


class CaptureFilter(logging.Filter):
    """On a log handler: a record a handler call emits (from a logger outside streamfn) goes to the
    call's block instead of being written at once."""

    def __init__(self, handler: logging.Handler) -> None:
        super().__init__()
        self._handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        invocation = _current.get()
        if invocation is None or record.name.startswith("streamfn"):
            return True
        return invocation.take_record(self._handler, record)


def real_stream(stream: TextIO) -> TextIO:
    """The stream behind a proxy (log handlers write there, never back into a call's buffer)."""
    return stream.target if isinstance(stream, StreamProxy) else stream


def attach(handler: logging.Handler) -> None:
    """Let ``handler`` hand records of handler calls to their blocks (logs.configure does this)."""
    if not any(isinstance(f, CaptureFilter) for f in handler.filters):
        handler.addFilter(CaptureFilter(handler))


def install() -> None:
    """Put the proxies in place and attach the filter to the root logger's handlers (once)."""
    global _installed
    if _installed:
        return
    with _install_lock:
        if _installed:
            return
        # A stream that is None (no file descriptor: print() then writes nothing) is left None.
        if sys.stdout is not None and not isinstance(sys.stdout, StreamProxy):
            sys.stdout = StreamProxy("stdout", sys.stdout)
        if sys.stderr is not None and not isinstance(sys.stderr, StreamProxy):
            sys.stderr = StreamProxy("stderr", sys.stderr)
        for handler in logging.getLogger().handlers:
            attach(handler)
        _installed = True


def uninstall() -> None:
    """Put the original streams back (tests; an embedding program that wants them back)."""
    global _installed
    with _install_lock:
        if isinstance(sys.stdout, StreamProxy):
            sys.stdout = sys.stdout.target
        if isinstance(sys.stderr, StreamProxy):
            sys.stderr = sys.stderr.target
        for handler in logging.getLogger().handlers:
            for found in [f for f in handler.filters if isinstance(f, CaptureFilter)]:
                handler.removeFilter(found)
        _installed = False
