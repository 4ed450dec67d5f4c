"""Loading the user's handler and calling it once per batch: timeouts, threads, answers.

The invoker only calls and interprets; what to do after a failure is the failure policy's job.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from ..errors import HandlerError, HandlerLoadError
from ..handler_api import Context, Result
from ..records import Batch, Position
from ..timefmt import iso_time

Interface = Literal["native", "lambda"]
EventBuilder = Callable[[Batch], dict[str, Any]]


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
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise HandlerLoadError(f"handler {ref!r}: cannot import module {module_name!r}: {exc!r}") from exc
    for attr in attr_path.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError:
            raise HandlerLoadError(f"handler {ref!r}: module {module_name!r} has no {attr_path!r}") from None
    if not callable(target):
        raise HandlerLoadError(f"handler {ref!r} is not callable")
    return target  # type: ignore[no-any-return]


class CallResult:
    """What one successful call produced: sink items, and the lowest failed position if any."""

    __slots__ = ("failed_at", "items", "state")

    def __init__(self, items: list[Any], failed_at: Position | None, state: Any = None) -> None:
        self.items = items
        self.failed_at = failed_at
        self.state = state


class Invoker:
    """Calls one handler: async ones on the loop, plain functions in a worker thread."""

    def __init__(
        self,
        handler: Callable[..., Any],
        *,
        interface: Interface,
        timeout: float,
        report_failures: bool,
        lambda_event: EventBuilder,
        executor: ThreadPoolExecutor | None = None,
        windowed: bool = False,
    ) -> None:
        self._handler = handler
        self._is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004 - callable objects with async __call__
        )
        self._interface = interface
        self._timeout = timeout
        self._report_failures = report_failures
        self._lambda_event = lambda_event
        self._executor = executor
        self._windowed = windowed

    async def call(self, batch: Batch, context: Context) -> CallResult:
        """Call the handler on ``batch``; raise HandlerError on an exception, a timeout or a bad answer."""
        payload: Any = batch
        if self._interface == "lambda":
            payload = self._event(batch, context)
        try:
            async with asyncio.timeout(self._timeout):
                answer = await self._run(payload, context)
        except TimeoutError:
            raise HandlerError(f"handler timed out after {self._timeout:g}s") from None
        except HandlerError:
            raise
        except Exception as exc:
            raise HandlerError(f"handler raised {type(exc).__name__}: {exc}") from exc
        return self._interpret(answer, batch)

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

    def _run(self, payload: Any, context: Context) -> Awaitable[Any]:
        if self._is_async:
            return self._handler(payload, context)  # type: ignore[no-any-return]
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, self._handler, payload, context)

    def _interpret(self, answer: Any, batch: Batch) -> CallResult:
        if self._interface == "lambda":
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
                raise HandlerError(f"handler returned {type(answer).__name__}, not a batchItemFailures answer")
            return CallResult([], None)
        items = list(answer.get("items") or [])
        state = answer.get("state")
        if self._windowed and "state" not in answer and not answer.get("batchItemFailures"):
            raise HandlerError("a tumbling-window handler must return {'state': ...}")
        if not self._report_failures:
            return CallResult(items, None, state)
        failures = answer.get("batchItemFailures")
        if failures is None:
            return CallResult(items, None, state)
        if not isinstance(failures, list):
            raise HandlerError("batchItemFailures must be a list")
        ids: list[Any] = []
        for entry in failures:
            if not isinstance(entry, Mapping) or "itemIdentifier" not in entry:
                raise HandlerError(f"malformed batchItemFailures entry {entry!r}")
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
                raise HandlerError(f"invalid failed-record identifier {raw!r}")
            position = by_id.get(str(raw))
            if position is None:
                raise HandlerError(f"failed-record identifier {raw!r} is not a record of this batch")
            if lowest is None or position < lowest:
                lowest = position
        return lowest
