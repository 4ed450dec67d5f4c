"""A lane's handler-call timeouts: ``asyncio.timeout``'s rules, one timer for many calls.

``asyncio.timeout`` (and any per-call timer) schedules and cancels a timer handle for every
call: at one call per batch that was the largest single cost of a no-op pipeline. A lane makes
its calls one at a time, in one task, with one timeout; so :class:`Watchdog` keeps one timer
armed at a call's due time and lets it run on across calls. When it fires it either finds the
call it was armed for over (and re-arms at the running call's due time, or rests while none
runs), or the running call past its due time: it cancels the task, as ``asyncio.timeout`` does.
A call then costs a clock read and a few attribute stores; the timer fires about once per
timeout period while calls keep coming. The timer runs in an empty context of its own: armed
inside a call, it would keep that call's context (its ``CallScope``, hence its batch) alive for a
whole timeout period (measured: ~35 MB held by 1,024 idle shards).
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

#: A timer may fire this much before its time (uvloop rounds delays to whole milliseconds): a call
#: this close to its due time has timed out, rather than the timer re-arming for the remainder.
EARLY = 0.001


class Watchdog:
    """Times out the calls one task makes one at a time: ``start(task)``, await, then ``stop()``.

    When a call passes ``delay`` seconds its task is cancelled; :meth:`stop` takes that
    cancellation back (``Task.uncancel``) and says whether the call timed out, so the caller
    can tell the timeout from a cancellation of its own task by someone else (then
    ``task.cancelling()`` stays above :attr:`cancelling`, the count when the call started).
    """

    __slots__ = ("_delay", "_due", "_expired", "_handle", "_loop", "_running", "_task", "cancelling")

    def __init__(self, delay: float) -> None:
        self._delay = delay
        self._due = 0.0
        self._expired = False
        self._running = False
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self.cancelling = 0

    def start(self, task: asyncio.Task[Any]) -> None:
        """A call begins in ``task`` (the running one); it times out ``delay`` seconds from now."""
        loop = task.get_loop()
        self._task = task
        self.cancelling = task.cancelling()
        self._expired = False
        self._running = True
        self._due = due = loop.time() + self._delay
        if self._handle is None or self._loop is not loop:  # else the armed timer re-arms when it fires
            self._loop = loop
            self._handle = loop.call_at(due, self._check, context=contextvars.Context())

    def stop(self) -> bool:
        """The call ended: True if it timed out (its task's cancellation is then taken back)."""
        self._running = False
        if not self._expired:
            return False
        task = self._task
        if task is not None:
            task.uncancel()
        return True

    def _check(self) -> None:
        self._handle = None
        task = self._task
        if not self._running or task is None:
            return  # no call runs: the next one arms the timer again
        loop = task.get_loop()
        if loop.time() >= self._due - EARLY:
            self._expired = True
            task.cancel()
        else:
            self._handle = loop.call_at(self._due, self._check, context=contextvars.Context())
