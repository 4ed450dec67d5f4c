"""A lane's handler in a process of its own, called through the Lambda Runtime API.

One warm process per lane, reused across batches. A call past its timeout kills the process (its
whole group) and fails the batch; the next call starts a new one. A process that dies during a call,
or cannot start (it exits, or reports an init error, before asking for its first invocation), fails
the batch too, as Lambda counts its init and runtime errors: the failure policy retries it with its
backoff, and the shard shows blocked by the handler with the reason meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import msgspec
import orjson

from ..engine.invoke import CallResult, Invoker, Slot
from ..errors import HandlerError
from ..handler_api import Context
from ..records import Batch
from . import wire
from .api import InvocationError, RuntimeApi
from .environment import lambda_environment, trace_id
from .process import HandlerProcess

log = logging.getLogger("streamfn.runtime")

#: Seconds a process may take to ask for its first invocation (Lambda's init phase gets 10).
INIT_TIMEOUT = 10.0


class ProcessExited(Exception):
    """The handler process ended while a call was waiting for its answer."""


class InitFailed(Exception):
    """The handler process could not start, or reported an init error."""


class Codec(Protocol):
    """How a batch becomes an invocation body and a response body becomes a call's result."""

    content_type: str

    def encode(self, invoker: Invoker, batch: Batch, context: Context) -> bytes: ...

    def decode(self, invoker: Invoker, body: bytes, batch: Batch) -> CallResult: ...


class LambdaJson:
    """Lambda's own: the event as JSON, the response as the handler's JSON answer."""

    content_type = "application/json"

    def encode(self, invoker: Invoker, batch: Batch, context: Context) -> bytes:
        return orjson.dumps(invoker.event(batch, context))

    def decode(self, invoker: Invoker, body: bytes, batch: Batch) -> CallResult:
        try:
            answer = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            answer = body.decode("utf-8", "replace")  # a non-JSON answer: a failure only with batchItemFailures
        return invoker.interpret(answer, batch)


class WorkerMsgpack:
    """streamfn's worker: records (data as bytes) or the event, and the answer, as msgpack."""

    content_type = wire.CONTENT_TYPE

    def encode(self, invoker: Invoker, batch: Batch, context: Context) -> bytes:
        event = None if invoker.interface == "native" else invoker.event(batch, context)
        return wire.encoder.encode(wire.invocation_of(batch, context, event))

    def decode(self, invoker: Invoker, body: bytes, batch: Batch) -> CallResult:
        try:
            answer = wire.answer_decoder.decode(body)
        except msgspec.MsgspecError as exc:  # not msgpack, or not an Answer
            raise HandlerError(f"the handler worker answered something that is not an answer: {exc}") from None
        return invoker.interpret(answer.restore(), batch)


@dataclass(frozen=True, slots=True)
class RuntimeSpec:
    """How to start one lane's handler process."""

    pipeline: str
    command: Sequence[str]
    #: ``_HANDLER`` (the runtime-api ``handler`` field as written).
    handler: str
    task_root: Path
    cwd: Path
    codec: Codec
    memory_limit_mb: int = 0
    extra_env: Mapping[str, str] | None = None


class ProcessSlots:
    """Makes one :class:`ProcessSlot` per lane and ends every process still running at :meth:`close`."""

    #: Seconds :meth:`close` waits for killed processes to be reaped.
    REAP_WAIT = 5.0

    def __init__(self, spec: RuntimeSpec) -> None:
        self.spec = spec
        self._slots: set[ProcessSlot] = set()
        self._processes: set[HandlerProcess] = set()

    def slot(self, invoker: Invoker) -> Slot:
        slot = ProcessSlot(self.spec, invoker, self)
        self._slots.add(slot)
        return slot

    async def close(self) -> None:
        """Kill every process still running (their lanes' own ends killed most already) and wait until
        they are reaped, so none outlives the pipeline."""
        for slot in list(self._slots):
            slot.close()
        for process in self._processes:
            process.kill()
        exits = [process.exited for process in self._processes]
        if exits:
            await asyncio.wait(exits, timeout=self.REAP_WAIT)

    def processes(self) -> list[int]:
        """Pids of the handler processes running now."""
        return [process.pid for process in self._processes if process.running]

    def started(self, process: HandlerProcess) -> None:
        self._processes.add(process)
        process.exited.add_done_callback(lambda _: self._processes.discard(process))

    def closed(self, slot: ProcessSlot) -> None:
        self._slots.discard(slot)


class ProcessSlot:
    """One lane's handler process. Calls never overlap: the process handles one invocation at a time,
    and a timed-out one is killed (and reaped) before the call returns.

    The slot ends its process when the task of its first call (the lane's) ends, however it ends.
    """

    def __init__(self, spec: RuntimeSpec, invoker: Invoker, owner: ProcessSlots) -> None:
        self._spec = spec
        self._invoker = invoker
        self._owner = owner
        self._process: HandlerProcess | None = None
        self._api: RuntimeApi | None = None
        self._dying: HandlerProcess | None = None
        self._bound = False
        self._closed = False

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.running else None

    @property
    def busy(self) -> bool:
        dying = self._dying
        return dying is not None and dying.running

    async def wait_idle(self) -> None:
        dying = self._dying
        if dying is not None and dying.running:
            await asyncio.wait((dying.exited,))

    async def call(self, batch: Batch, context: Context) -> CallResult:
        if not self._bound:
            self._bind_to_lane()
        if self.busy:
            await self.wait_idle()
        process, api = await self._ready(context)
        spec, invoker = self._spec, self._invoker
        request_id = context.aws_request_id
        timeout = invoker.timeout
        headers = {
            "Lambda-Runtime-Aws-Request-Id": request_id,
            "Lambda-Runtime-Deadline-Ms": str(int((time.time() + timeout) * 1000)),
            "Lambda-Runtime-Invoked-Function-Arn": context.invoked_function_arn,
            "Lambda-Runtime-Trace-Id": trace_id(),
            "Content-Type": spec.codec.content_type,
        }
        answer = api.invoke(request_id, spec.codec.encode(invoker, batch, context), headers)
        process.fields["request_id"] = request_id
        try:
            async with asyncio.timeout(timeout):
                body = await answer
        except TimeoutError:
            api.forget(request_id)
            await self._kill(process)
            raise HandlerError(f"handler timed out after {timeout:g}s; its process was killed "
                               "and a new one starts for the next call") from None
        except InvocationError as exc:
            raise HandlerError(f"handler failed: {exc}") from None
        except ProcessExited as exc:
            raise HandlerError(str(exc)) from None
        except asyncio.CancelledError:
            api.forget(request_id)
            self._kill_now(process)  # the lane stops: a call it abandons must not run on
            raise
        finally:
            process.fields["request_id"] = None
        return spec.codec.decode(invoker, body, batch)

    def close(self) -> None:
        """Kill the process now (its exit is reaped in the background); the slot takes no more calls."""
        self._closed = True
        if self._process is not None:
            self._kill_now(self._process)
        self._owner.closed(self)

    def _bind_to_lane(self) -> None:
        self._bound = True
        task = asyncio.current_task()
        if task is not None:
            task.add_done_callback(lambda _: self.close())

    async def _ready(self, context: Context) -> tuple[HandlerProcess, RuntimeApi]:
        """The running process, or a new one once it asked for its first invocation."""
        if self._closed:
            raise HandlerError("the handler's process slot is closed (its lane stopped)")
        process, api = self._process, self._api
        if process is not None and api is not None and process.running:
            return process, api
        try:
            return await self._start(context)
        except InitFailed as exc:
            message = f"handler process cannot start: {exc}"
            log.error(message, extra={"pipeline": self._spec.pipeline, "shard": context.shard_id,
                                      "command": list(self._spec.command)})
            raise HandlerError(message) from None

    async def _start(self, context: Context) -> tuple[HandlerProcess, RuntimeApi]:
        spec = self._spec
        api = RuntimeApi()
        address = await api.start()
        env = lambda_environment(api=address, function_name=spec.pipeline, handler=spec.handler,
                                 task_root=spec.task_root, log_stream=context.shard_id,
                                 memory_limit_mb=spec.memory_limit_mb)
        if spec.extra_env:
            env.update(spec.extra_env)
        fields: dict[str, object] = {"pipeline": spec.pipeline, "shard": context.shard_id, "request_id": None}
        try:
            process = await HandlerProcess.start(spec.command, env=env, cwd=spec.cwd,
                                                 memory_limit_mb=spec.memory_limit_mb, fields=fields)
        except OSError as exc:
            api.abort(ProcessExited("not started"))
            raise InitFailed(f"cannot start {spec.command[0]!r}: {exc.strerror or exc}") from None
        self._owner.started(process)
        process.exited.add_done_callback(functools.partial(_ended, api, process))
        self._process, self._api = process, api
        waiting: set[asyncio.Future[object]] = {api.ready, api.init_error, process.exited}  # type: ignore[arg-type]
        await asyncio.wait(waiting, timeout=max(INIT_TIMEOUT, self._invoker.timeout),
                           return_when=asyncio.FIRST_COMPLETED)
        if api.ready.done() and not api.ready.cancelled() and process.running:
            log.info("handler process started", extra={"pipeline": spec.pipeline, "shard": context.shard_id,
                                                        "pid": process.pid, "command": list(spec.command)})
            return process, api
        if api.init_error.done() and not api.init_error.cancelled():
            why = f"the runtime reported an init error: {api.init_error.result()}"
        elif not process.running:
            why = (f"the process exited with code {process.exited.result()} before asking for its first "
                   "invocation (its output is in the log)")
        else:
            why = f"the process did not ask for an invocation within {max(INIT_TIMEOUT, self._invoker.timeout):g}s"
        await self._kill(process)
        raise InitFailed(why)

    async def _kill(self, process: HandlerProcess) -> None:
        """Kill and wait until it is gone: no call of this lane may overlap it."""
        self._kill_now(process)
        await asyncio.wait((process.exited,))

    def _kill_now(self, process: HandlerProcess) -> None:
        process.kill()
        if process.running:
            self._dying = process
        if self._process is process:
            self._process = None
            if self._api is not None:
                self._api.abort(ProcessExited("the handler process was killed"))
                self._api = None


def _ended(api: RuntimeApi, process: HandlerProcess, exited: asyncio.Future[int]) -> None:
    """The process ended: a call waiting for its answer fails, and the server stops."""
    code = exited.result()
    if process.killed:
        api.abort(ProcessExited("the handler process was killed"))
        return
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    fields = {key: value for key, value in process.fields.items() if value is not None}
    log.warning("handler process %s", how, extra={**fields, "pid": process.pid})
    api.abort(ProcessExited(f"the handler process {how} during the call; a new one starts for the retry"))
