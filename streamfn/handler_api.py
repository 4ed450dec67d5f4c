"""What a handler receives besides its batch, and what it may return."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any


class Result:
    """A native handler's answer: items for the sinks, and the records that failed.

    ``failed`` holds record identifiers (``record.sequence`` or ``record.identifier``); it is
    read only when the pipeline sets ``report_batch_item_failures``. Processing then resumes at
    the lowest failed record, so return items only for the records before it.
    """

    __slots__ = ("failed", "items", "state")

    def __init__(self, items: Iterable[Any] = (), failed: Iterable[int | str] = (), state: Any = None) -> None:
        self.items = list(items)
        self.failed = list(failed)
        self.state = state

    def __repr__(self) -> str:
        return f"Result(items={len(self.items)}, failed={self.failed!r})"


class Context:
    """Facts about the current call, shaped so an AWS Lambda handler's ``context`` use still works.

    Tumbling windows add ``state`` (what the previous call of the window returned, as
    ``Result.state`` or Lambda's ``{"state": ...}``), ``window_start``/``window_end`` (epoch
    seconds), ``is_final`` (the last call of the window) and ``terminated_early`` (the previous
    state exceeded the size limit and was dropped).
    """

    __slots__ = ("_deadline", "_function_arn", "_request_id", "alias", "attempt", "function_version", "is_final",
                 "pipeline", "shard_id", "state", "terminated_early", "window")

    memory_limit_in_mb = 0
    #: Lambda's Cognito identity and mobile client context: None, as for any stream invocation.
    identity: Any = None
    client_context: Any = None

    def __init__(
        self,
        *,
        pipeline: str,
        shard_id: str,
        attempt: int,
        timeout: float,
        state: Any = None,
        window: tuple[float, float] | None = None,
        is_final: bool = False,
        terminated_early: bool = False,
        function_arn: str = "",
    ) -> None:
        self.pipeline = pipeline
        self.shard_id = shard_id
        self.attempt = attempt
        self.state = state
        self.window = window
        self.is_final = is_final
        self.terminated_early = terminated_early
        self._deadline = time.monotonic() + timeout
        self._request_id: str | None = None
        #: The published version handling this call (``handler_version``), and the alias it was
        #: reached through; "$LATEST" and None for the unversioned handler.
        self.function_version = "$LATEST"
        self.alias: str | None = None
        self._function_arn = function_arn

    @property
    def function_name(self) -> str:
        return self.pipeline

    @property
    def aws_request_id(self) -> str:
        """A fresh id per call, made only when asked for (uuid4 costs more than the rest of a call)."""
        if self._request_id is None:
            self._request_id = str(uuid.uuid4())
        return self._request_id

    @property
    def invoked_function_arn(self) -> str:
        """The pipeline's ``function_arn`` (else the local form), qualified as Lambda qualifies it:
        ``:alias`` when called through one, else ``:version``."""
        arn = self._function_arn or f"arn:aws:lambda:local:000000000000:function:{self.pipeline}"
        if self.alias is not None:
            return f"{arn}:{self.alias}"
        return arn if self.function_version == "$LATEST" else f"{arn}:{self.function_version}"

    @property
    def log_group_name(self) -> str:
        return f"/streamfn/{self.pipeline}"

    @property
    def log_stream_name(self) -> str:
        return self.shard_id

    @property
    def window_start(self) -> float | None:
        return self.window[0] if self.window else None

    @property
    def window_end(self) -> float | None:
        return self.window[1] if self.window else None

    def remaining(self) -> float:
        """Seconds left before the call times out."""
        return max(0.0, self._deadline - time.monotonic())

    def get_remaining_time_in_millis(self) -> int:
        return int(self.remaining() * 1000)
