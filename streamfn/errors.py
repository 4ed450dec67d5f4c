"""Every exception streamfn raises on purpose, in one hierarchy, grouped by what the caller does::

    StreamfnError
    ├── ConfigError            refuse the config: names the file, the field and what was expected
    ├── InputError             records given to ``streamfn produce`` are malformed: names the line
    ├── HandlerError           fail the batch: the user's function failed, timed out or answered badly
    │   └── HandlerLoadError   refuse to start: ``module:function`` cannot be imported
    ├── RetryableError         retry with backoff: throttling, timeouts, connection errors, 5xx, a full
    │                          disk. Never moves a checkpoint; the shard counts as blocked meanwhile
    ├── SourceError            block the shard visibly: a source failed in a way retrying will not fix
    │                          (a rejected resume position, an unknown shard)
    ├── SinkError              fail the batch: output a sink or destination cannot take as it is (an
    │                          item it cannot encode); goes through the failure policy like a handler error
    └── CheckpointError        the checkpoint store failed in a way retrying will not fix
        ├── StateMismatchError refuse to start: checkpoints belong to another log or an older format
        └── LeaseLostError     stop the shard's work at once and write nothing: another worker owns it

Any component may raise any of them: the class says what to do, not who raised it. An exception
from outside this hierarchy is classified by :func:`streamfn.engine.outcomes.classify_write_error`.
"""

from __future__ import annotations


class StreamfnError(Exception):
    """Base of every error streamfn raises on purpose."""


class ConfigError(StreamfnError):
    """A pipeline file is invalid. The message names the file and the field path."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None) -> None:
        self.file = file
        self.field = field
        self.message = message
        where = ": ".join(part for part in (file, f"field `{field}`" if field else None) if part)
        super().__init__(f"{where}: {message}" if where else message)


class InputError(StreamfnError):
    """Records handed to streamfn (``streamfn produce --input``) are malformed."""


class HandlerError(StreamfnError):
    """The user's handler failed on a batch, or returned an answer streamfn cannot use."""


class AnswerError(HandlerError):
    """The handler returned normally with an answer streamfn cannot use (a malformed
    ``batchItemFailures``): the batch fails, but as in Lambda it is no function error."""


class HandlerLoadError(HandlerError):
    """The handler named in a config cannot be imported or is not callable."""


class RetryableError(StreamfnError):
    """A transient failure of a source, sink, store or destination: retry with backoff.

    ``kind`` names the cause for metrics and logs (``throttled``, ``timeout``, ``connection``,
    ``server``, ``storage``...).
    """

    def __init__(self, message: str, *, kind: str = "transient") -> None:
        super().__init__(message)
        self.kind = kind


class SourceError(StreamfnError):
    """A source failed in a way that retrying will not fix: the shard blocks and says why."""


class SinkError(StreamfnError):
    """Output that a sink or destination cannot take as it is: the batch fails (failure policy)."""


class CheckpointError(StreamfnError):
    """The checkpoint store failed in a way that retrying will not fix."""


class StateMismatchError(CheckpointError):
    """Stored state does not belong to this log or this version: refuse, and say how to migrate."""


class LeaseLostError(CheckpointError):
    """This worker no longer owns the shard: its work stops and it must not checkpoint."""
