"""A handler call's timeout: ``asyncio.timeout``'s rules at a fraction of its cost.

``asyncio.timeout`` is pure Python and reschedules through several frames; at one call per
batch it was ~15 % of a no-op pipeline's CPU. :class:`Deadline` keeps its contract for the one
use the engine has (one ``async with`` around one await, never rescheduled): when the delay
passes, the task is cancelled; on exit that cancellation is taken back and becomes
``TimeoutError``, unless someone else cancelled the task too, whose cancellation then passes on.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any


class Deadline:
    """``async with Deadline(seconds):`` cancels the enclosed await after ``seconds``.

    ``task``: the current task, when the caller has it already (looking it up costs ~0.5 µs).
    """

    __slots__ = ("_cancelling", "_delay", "_expired", "_handle", "_task")

    def __init__(self, delay: float, task: asyncio.Task[Any] | None = None) -> None:
        self._delay = delay
        self._expired = False
        self._handle: asyncio.TimerHandle | None = None
        self._task = task
        self._cancelling = 0

    def expired(self) -> bool:
        """The delay passed before the block ended."""
        return self._expired

    async def __aenter__(self) -> Deadline:
        task = self._task or asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadline must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._handle = asyncio.get_running_loop().call_later(self._delay, self._expire)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        # Take our cancellation back; if none other is pending, the CancelledError was the timeout.
        if (self._expired and self._task is not None and self._task.uncancel() <= self._cancelling
                and exc_type is asyncio.CancelledError):
            raise TimeoutError from exc

    def _expire(self) -> None:
        self._expired = True
        if self._task is not None:
            self._task.cancel()
