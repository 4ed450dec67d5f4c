"""Loading the user's handler and calling it once per batch: timeouts, threads, answers.

The invoker only calls and interprets; what to do after a failure is the failure policy's job.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec

from ..errors import AnswerError, HandlerError, HandlerLoadError
from ..handler_api import Context, Result
from ..records import Batch, Position
from ..timefmt import iso_time
from .deadline import Watchdog
from .handler_threads import HANDLER_THREAD_PREFIX, HandlerThreads, Outcome

Interface = Literal["native", "lambda", "runtime-api"]
EventBuilder = Callable[[Batch], dict[str, Any]]


class Slot(Protocol):
    """One lane's way to call the handler, wherever it runs (a thread, the lane's task, a process).

    What a lane may rely on: its calls never overlap, a timed-out one included; :meth:`call` raises
    HandlerError for every failure of the handler (an exception, a timeout, an unusable answer, a
    process that died) and lets only the caller's own cancellation through; while :attr:`busy`, a
    previous call is still running and the next :meth:`call` waits for it.
    """

    @property
    def busy(self) -> bool:
        """A previous call (one that timed out) is still running."""
        ...

    async def wait_idle(self) -> None:
        """Return when no call of this slot is running."""
        ...

    def call(self, batch: Batch, context: Context, /) -> Awaitable[CallResult]:
        """Call the handler once on ``batch``."""
        ...


class SlotFactory(Protocol):
    """Makes the slots of handlers that run outside the engine's process (one process per lane)."""

    def slot(self, invoker: Invoker) -> Slot:
        """A slot for one lane."""
        ...

    async def close(self) -> None:
        """End every process this factory started, and wait until they are gone (the pipeline stops)."""
        ...


def load_handler(ref: str, search_dirs: Sequence[Path]) -> Callable[..., Any]:
    """Import ``module:function``, looking in ``search_dirs`` (the config's folder, then the cwd).

    Every failure is a HandlerLoadError naming the reference, so a typo stops the daemon at
    start-up with one clear line instead of a crash loop on the first batch.
    """
    module_name, sep, attr_path = ref.partition(":")
    if not sep or not module_name or not attr_path:
        raise HandlerLoadError(f"handler {ref!r} must look like 'module:function'")
    for directory in reversed(search_dirs):
        entry = str(directory.resolve())
        if entry not in sys.path:
            sys.path.insert(0, entry)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise HandlerLoadError(f"handler {ref!r}: cannot import module {module_name!r}: {exc!r}") from exc
    return handler_in(module, attr_path, f"handler {ref!r}")


def handler_in(module: Any, attr_path: str, named: str) -> Callable[..., Any]:
    """The callable at ``attr_path`` (dotted) in an imported ``module``; ``named`` starts each error."""
    target = module
    for attr in attr_path.split("."):
        try:
            target = getattr(target, attr)  # the user's handler path, as written in the config
        except AttributeError:
            raise HandlerLoadError(f"{named}: module {module.__name__!r} has no {attr_path!r}") from None
    if not callable(target):
        raise HandlerLoadError(f"{named} is not callable")
    return target  # type: ignore[no-any-return]


class CallResult(msgspec.Struct, gc=False):
    """What one successful call produced: sink items, and the lowest failed position if any.
    (A struct: made once per call, in C.)"""

    items: list[Any]
    failed_at: Position | None
    state: Any = None


class Invoker:
    """Calls one handler: async ones in the calling lane's task, plain functions in a thread of their own,
    or, with ``slots``, a process per lane (``isolation = "process"``, ``interface = "runtime-api"``).

    It builds the event and interprets the answer wherever the handler runs. Use one :class:`Slot`
    per lane (:meth:`slot`): a slot never starts a call while its previous one, timed out but not
    yet ended, still runs.
    """

    def __init__(
        self,
        handler: Callable[..., Any] | None,
        *,
        interface: Interface,
        timeout: float,
        report_failures: bool,
        lambda_event: EventBuilder,
        threads: HandlerThreads | None = None,
        windowed: bool = False,
        slots: SlotFactory | None = None,
    ) -> None:
        self._handler: Callable[..., Any] = handler or _no_handler
        self._is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004 - callable objects with async __call__
        )
        self._interface = interface
        self.timeout = timeout
        self._report_failures = report_failures
        self._lambda_event = lambda_event
        self._threads = threads or HandlerThreads(f"{HANDLER_THREAD_PREFIX}invoker")
        self._windowed = windowed
        self._slots = slots

    @property
    def interface(self) -> Interface:
        return self._interface

    @property
    def report_failures(self) -> bool:
        return self._report_failures

    def slot(self) -> Slot:
        """A slot for one lane: its calls run one at a time, a timed-out one included."""
        if self._slots is not None:
            return self._slots.slot(self)
        return HandlerSlot(self)

    async def close(self) -> None:
        """End the handler processes still running (none without ``slots``)."""
        if self._slots is not None:
            await self._slots.close()

    def event(self, batch: Batch, context: Context) -> dict[str, Any]:
        """The Lambda event of ``batch`` (with the window fields of a tumbling window's call)."""
        return self._event(batch, context)

    def interpret(self, answer: Any, batch: Batch) -> CallResult:
        """What the handler's answer means for ``batch``; HandlerError if it is unusable."""
        return self._interpret(answer, batch)

    async def call(self, batch: Batch, context: Context) -> CallResult:
        """One call outside any slot: nothing stops it from overlapping an earlier timed-out call
        of the same batch, so a loop that retries should call through :meth:`slot` instead."""
        return await HandlerSlot(self).call(batch, context)

    def _start(self, batch: Batch, context: Context, reply: asyncio.Future[Outcome]) -> asyncio.Future[Any]:
        """Start a plain-function handler in a thread. ``reply`` gets the call's Outcome as soon as it
        is known; the future returned ends exactly when the call ends (later than a timeout, for a
        stuck call: a thread cannot be stopped, its call runs on to its end)."""
        payload: Any = batch
        if self._interface != "native":
            payload = self._event(batch, context)
        running = self._threads.submit(self._handler, payload, context)
        running.add_done_callback(functools.partial(_relay, reply))
        return running

    def _event(self, batch: Batch, context: Context) -> dict[str, Any]:
        event = self._lambda_event(batch)
        if self._windowed and context.window is not None:
            event.update(
                window={"start": iso_time(context.window[0]), "end": iso_time(context.window[1])},
                state=context.state or {},
                shardId=batch.shard_id,
                isFinalInvokeForWindow=context.is_final,
                isWindowTerminatedEarly=context.terminated_early,
            )
        return event

    def _outcome(self, outcome: Outcome, batch: Batch) -> CallResult:
        error = outcome.error
        if error is None:
            return self._interpret(outcome.value, batch)
        if isinstance(error, HandlerError):
            raise error
        raise HandlerError(f"handler raised {type(error).__name__}: {error}") from error

    def _interpret(self, answer: Any, batch: Batch) -> CallResult:
        if self._interface != "native":
            return self._interpret_lambda(answer, batch)
        if answer is None:
            return CallResult([], None)
        if isinstance(answer, Result):
            failed = self._failed_position(answer.failed, batch) if self._report_failures else None
            return CallResult(answer.items, failed, answer.state)
        if isinstance(answer, (str, bytes, Mapping)) or not isinstance(answer, Iterable):
            raise HandlerError(
                f"handler returned {type(answer).__name__}; return a list of items, a Result, or None"
            )
        return CallResult(list(answer), None)

    def _interpret_lambda(self, answer: Any, batch: Batch) -> CallResult:
        """Lambda's rules: None, "", {} and an empty or null list are success (§2.5)."""
        if answer is None or answer == "":
            return CallResult([], None)
        if isinstance(answer, list):
            return CallResult(answer, None)
        if not isinstance(answer, Mapping):
            if self._report_failures:
                raise AnswerError(f"handler returned {type(answer).__name__}, not a batchItemFailures answer")
            return CallResult([], None)
        items = list(answer.get("items") or [])
        state = answer.get("state")
        if self._windowed and "state" not in answer and not answer.get("batchItemFailures"):
            raise AnswerError("a tumbling-window handler must return {'state': ...}")
        if not self._report_failures:
            return CallResult(items, None, state)
        failures = answer.get("batchItemFailures")
        if failures is None:
            return CallResult(items, None, state)
        if not isinstance(failures, list):
            raise AnswerError("batchItemFailures must be a list")
        ids: list[Any] = []
        for entry in failures:
            if not isinstance(entry, Mapping) or "itemIdentifier" not in entry:
                raise AnswerError(f"malformed batchItemFailures entry {entry!r}")
            ids.append(entry["itemIdentifier"])
        return CallResult(items, self._failed_position(ids, batch), state)

    @staticmethod
    def _failed_position(ids: Sequence[Any], batch: Batch) -> Position | None:
        """The lowest failed record's position; an id that is not in the batch fails it all."""
        if not ids:
            return None
        by_id = {r.identifier: r.position for r in batch}
        lowest: Position | None = None
        for raw in ids:
            if raw is None or raw == "" or isinstance(raw, bool) or not isinstance(raw, (str, int)):
                raise AnswerError(f"invalid failed-record identifier {raw!r}")
            position = by_id.get(str(raw)) or _spelled_position(str(raw), by_id)
            if position is None:
                raise AnswerError(f"failed-record identifier {raw!r} is not a record of this batch")
            if lowest is None or position < lowest:
                lowest = position
        return lowest


class HandlerSlot:
    """One lane's way to call the handler: its calls never overlap, even past a timeout.

    A timed-out async call is cancelled; a timed-out plain-function call cannot be, and runs on in
    its thread. Either way the slot stays :attr:`busy` until the call really ends, and the next
    :meth:`call` waits for that first, so a batch is never handled twice at the same time.
    A slot serves one caller at a time: its lane.
    """

    __slots__ = ("_invoker", "_loop", "_running", "_watchdog", "call")

    def __init__(self, invoker: Invoker) -> None:
        self._invoker = invoker
        self._loop: asyncio.AbstractEventLoop | None = None  # of the last call: found once, not per call
        self._running: asyncio.Future[Any] | None = None
        self._watchdog = Watchdog(invoker.timeout)
        #: An async handler runs in the lane's own task (no task, no loop turn of its own per call):
        #: nothing can overlap it, and a call that outlives its timeout holds only its lane.
        self.call: Callable[[Batch, Context], Awaitable[CallResult]] = (
            self._call_async if invoker._is_async else self._call_in_thread)

    @property
    def busy(self) -> bool:
        """A previous call (one that timed out) is still running."""
        running = self._running
        return running is not None and not running.done()

    async def wait_idle(self) -> None:
        """Return when no call of this slot is running (cancelling the wait leaves the call be)."""
        running = self._running
        if running is not None and not running.done():
            await asyncio.wait((running,))

    async def _call_async(self, batch: Batch, context: Context) -> CallResult:
        """An async handler runs in the calling lane's own task: the lane's next call cannot start
        before it ends, and a timeout cancels it (the slot's :class:`Watchdog`: one timer for
        all of the lane's calls). Whatever it raises (SystemExit and KeyboardInterrupt included)
        is caught here, before it could escape the task and stop the loop; one that swallows the
        cancellation and answers late has still timed out."""
        invoker = self._invoker
        payload: Any = batch if invoker._interface == "native" else invoker._event(batch, context)
        # The running task, looked up in the loop of the last call: asyncio.current_task() would find
        # the running loop first, at the price of a getpid() system call per call.
        task = None if self._loop is None else asyncio.current_task(self._loop)
        if task is None:
            task = asyncio.current_task()
            if task is None:
                raise RuntimeError("an async handler must be called from a task")
            self._loop = task.get_loop()
        watchdog = self._watchdog
        watchdog.start(task)
        try:
            answer = await invoker._handler(payload, context)
        except BaseException as exc:
            timed_out = watchdog.stop()
            if isinstance(exc, asyncio.CancelledError):
                if task.cancelling() > (watchdog.cancelling if timed_out else 0):
                    raise  # the engine's own cancellation (a stop): not the handler's failure
                if not timed_out:
                    raise HandlerError(f"handler raised CancelledError: {exc}") from exc
            if timed_out:
                raise HandlerError(f"handler timed out after {invoker.timeout:g}s") from None
            if isinstance(exc, HandlerError):
                raise
            raise HandlerError(f"handler raised {type(exc).__name__}: {exc}") from exc
        if watchdog.stop():
            raise HandlerError(f"handler timed out after {invoker.timeout:g}s")
        if answer is None:  # success in every interface (see _interpret), and a no-op handler's answer
            return CallResult([], None)
        return invoker._interpret(answer, batch)

    async def _call_in_thread(self, batch: Batch, context: Context) -> CallResult:
        """Call the handler on ``batch`` once the previous call ended.

        Raises HandlerError on any exception from the handler (SystemExit and KeyboardInterrupt
        included), on a timeout and on an answer streamfn cannot use. Only the caller's own
        cancellation passes through as CancelledError; it cancels an async call too.
        """
        if self.busy:
            await self.wait_idle()
        invoker = self._invoker
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Outcome] = loop.create_future()
        running = invoker._start(batch, context, reply)
        self._running = running
        expiry = loop.call_later(invoker.timeout, _settle, reply, _TIMED_OUT)
        try:
            outcome = await reply
        finally:
            expiry.cancel()
        if outcome is _TIMED_OUT:
            raise HandlerError(f"handler timed out after {invoker.timeout:g}s")
        if running.done():
            self._running = None  # holds the call's answer: let it go with the batch
        return invoker._outcome(outcome, batch)


def _no_handler(*_: Any) -> Any:
    raise HandlerError("this pipeline's handler runs in its own process, not in the engine's")


#: The reply a call gets when its timeout passes first.
_TIMED_OUT = Outcome(None, None)


def _settle(reply: asyncio.Future[Outcome], outcome: Outcome) -> None:
    if not reply.done():
        reply.set_result(outcome)


def _relay(reply: asyncio.Future[Outcome], running: asyncio.Future[Outcome]) -> None:
    _settle(reply, running.result())



def _spelled_position(text: str, by_id: Mapping[str, Position]) -> Position | None:
    """The batch's position ``text`` names in another spelling of the same number: DynamoDB Streams
    zero-pads its sequence numbers (21 to 40 digits) in the event a handler takes ids from."""
    try:
        position = Position.parse(text)
    except ValueError:
        return None
    return position if position in by_id.values() else None
