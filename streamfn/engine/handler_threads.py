"""Threads for plain-function handlers: a thread per call in flight, so a call that never returns
holds only its own thread and every other call still gets one.

A thread cannot be stopped from outside: a timed-out call keeps its thread until the function
returns, and the next call gets an idle thread or a new one. The threads are daemon threads, so
a call abandoned at shutdown does not hold the interpreter at exit; :func:`running_calls` says
whether any is still running.

A call runs in a copy of the submitter's context variables, as ``asyncio.to_thread`` does: what
the engine set around the call (the call whose output it is, engine/capture.py; the current
trace span) holds inside the handler too.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import queue
import threading
from collections.abc import Callable
from typing import Any

#: Threads that run plain-function handlers are named with this prefix.
HANDLER_THREAD_PREFIX = "streamfn-handler-"

#: Seconds an idle thread waits for another call before it ends.
IDLE_TIMEOUT = 60.0

_running = 0
_running_lock = threading.Lock()


def running_calls() -> int:
    """Handler calls still running in threads, in every pipeline of the process.

    A call stops counting before its caller sees its result, so after a clean drain this is 0.
    """
    return _running


def _count(delta: int) -> None:
    global _running
    with _running_lock:
        _running += delta


class Outcome:
    """What a call ended with: its return value, or the exception it raised (any BaseException)."""

    __slots__ = ("error", "value")

    def __init__(self, value: Any, error: BaseException | None) -> None:
        self.value = value
        self.error = error


class _Call:
    """One call handed to a thread; its result goes back to the loop that submitted it."""

    __slots__ = ("args", "context", "fn", "future", "loop")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Outcome],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
    ) -> None:
        self.loop = loop
        self.future = future
        self.fn = fn
        self.args = args
        self.context = contextvars.copy_context()  # the submitter's: cheap (an immutable mapping)

    def run(self) -> Outcome:
        try:
            outcome = Outcome(self.context.run(self.fn, *self.args), None)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt...: the handler's failure, not ours
            outcome = Outcome(None, exc)
        _count(-1)  # before the caller can see the outcome: a drained daemon counts 0
        return outcome

    def reply(self, outcome: Outcome) -> None:
        # A closed loop raises RuntimeError: the call was abandoned at shutdown, nobody waits for it.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(_settle, self.future, outcome)


def _settle(future: asyncio.Future[Outcome], outcome: Outcome) -> None:
    if not future.done():
        future.set_result(outcome)


class HandlerThreads:
    """Runs plain functions in daemon threads, one per call in flight, reusing idle ones.

    The number of threads follows the number of calls in flight (stuck ones included), not a
    fixed pool size; threads idle for ``idle_timeout`` seconds end.
    """

    def __init__(self, name: str, *, idle_timeout: float | None = IDLE_TIMEOUT) -> None:
        self._name = name
        self._idle_timeout = idle_timeout
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        # Threads waiting for a call and not yet promised one: a submit takes one or starts a thread.
        self._idle = threading.Semaphore(0)
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Outcome]:
        """Start ``fn(*args)`` in a thread; the future (on the running loop) gets its Outcome.

        The future never fails and is never cancelled by this class: it stays pending exactly as
        long as the call runs, which is what lets a caller wait for a timed-out call to end.
        """
        if self._closed:
            raise RuntimeError(f"handler threads {self._name!r} are shut down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        _count(1)
        self._calls.put(_Call(loop, future, fn, args))
        if not self._idle.acquire(blocking=False):
            self._start_thread()
        return future

    def thread_count(self) -> int:
        """Threads alive now, idle or running a call."""
        with self._lock:
            return len(self._threads)

    def shutdown(self) -> None:
        """Idle threads end now, busy ones when their call returns; no call is accepted after."""
        self._closed = True
        for _ in range(self.thread_count()):
            self._calls.put(None)

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._serve, name=f"{self._name}-{next(self._numbers)}", daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _serve(self) -> None:
        try:
            while True:
                try:
                    call = self._calls.get(timeout=self._idle_timeout)
                except queue.Empty:
                    if self._idle.acquire(blocking=False):
                        return  # no submit counts on this thread: it may go
                    continue  # a submit just promised this thread a call
                if call is None:
                    return
                outcome = call.run()
                self._idle.release()  # before the reply, so the caller's next call finds this thread idle
                call.reply(outcome)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())
