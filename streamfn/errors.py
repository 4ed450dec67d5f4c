"""Every exception streamfn raises on purpose, in one hierarchy::

    StreamfnError
    ├── ConfigError            a pipeline file is wrong: names the file, the field and what was expected
    ├── InputError             records given to ``streamfn produce`` are malformed: names the line
    ├── HandlerError           the user's function failed to load, or failed / timed out on a batch
    │   └── HandlerLoadError   ``module:function`` cannot be imported (a startup error, never a crash loop)
    ├── SourceError            a source failed in a way retrying will not fix
    │   └── RetryableError     throttling, timeouts, 5xx: retried with backoff, never moves a checkpoint
    ├── SinkError              a sink refused a write in a way retrying will not fix
    └── CheckpointError        the checkpoint store failed
        └── LeaseLostError     another worker owns the shard now: stop its work at once, write nothing
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


class HandlerLoadError(HandlerError):
    """The handler named in a config cannot be imported or is not callable."""


class SourceError(StreamfnError):
    """A source failed in a way that retrying will not fix."""


class RetryableError(SourceError):
    """A transient failure of a source or store (throttle, timeout, 5xx): retry with backoff."""


class SinkError(StreamfnError):
    """A sink refused a write in a way that retrying will not fix."""


class CheckpointError(StreamfnError):
    """The checkpoint store failed."""


class LeaseLostError(CheckpointError):
    """This worker no longer owns the shard: its work stops and it must not checkpoint."""
