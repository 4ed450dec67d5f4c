"""What crosses the process boundary with ``isolation = "process"``: msgpack, so records' data stays bytes.

The engine is the Runtime API server, the worker (:mod:`streamfn.runtime.worker`) its client: an
:class:`Invocation` is the body of ``GET /runtime/invocation/next``, an :class:`Answer` the body
the worker posts to ``.../response``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from ..handler_api import Context, Result
from ..records import Batch, Record

CONTENT_TYPE = "application/vnd.streamfn.invocation+msgpack"


class WireRecord(msgspec.Struct, array_like=True, gc=False):
    """A Record with its sequence as a decimal string: msgpack integers stop at 64 bits, and Kinesis
    sequence numbers do not."""

    sequence: str
    partition_key: str
    data: bytes
    arrival_time: float
    sub_sequence: int = 0
    attributes: dict[str, Any] | None = None

    @classmethod
    def of(cls, r: Record) -> WireRecord:
        attributes = None if r.attributes is None else dict(r.attributes)
        return cls(str(r.sequence), r.partition_key, r.data, r.arrival_time, r.sub_sequence, attributes)

    def record(self, shard_id: str) -> Record:
        return Record(shard_id, int(self.sequence), self.partition_key, self.data, self.arrival_time,
                      self.sub_sequence, self.attributes)


class Invocation(msgspec.Struct, array_like=True):
    """One call: a native handler's records, or a Lambda handler's event, and its context."""

    pipeline: str
    shard_id: str
    attempt: int
    timeout: float
    records: list[WireRecord] | None = None
    event: Any = None
    state: Any = None
    window: tuple[float, float] | None = None
    is_final: bool = False
    terminated_early: bool = False

    def context(self, request_id: str) -> Context:
        context = WorkerContext(pipeline=self.pipeline, shard_id=self.shard_id, attempt=self.attempt,
                                timeout=self.timeout, state=self.state, window=self.window, is_final=self.is_final,
                                terminated_early=self.terminated_early)
        context.request_id = request_id
        context.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        return context

    def payload(self) -> Any:
        """What the handler is called with: a Batch (native) or the Lambda event."""
        if self.records is not None:
            shard_id = self.shard_id
            return Batch(shard_id, [r.record(shard_id) for r in self.records])
        return self.event


class WorkerContext(Context):
    """The context of a call in a worker: its request id is the invocation's, not a new one, and its
    version and memory size are those the engine set in the worker's environment, as Lambda's are."""

    __slots__ = ("request_id",)
    request_id: str
    memory_limit_in_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "0") or 0)

    @property
    def aws_request_id(self) -> str:
        return self.request_id


class Answer(msgspec.Struct, array_like=True):
    """A handler's return value; ``result``: ``value`` is a Result's ``[items, failed, state]``."""

    value: Any = None
    result: bool = False

    def restore(self) -> Any:
        if self.result:
            items, failed, state = self.value
            return Result(items, failed, state)
        return self.value


def answer_of(value: Any) -> Answer:
    """A handler's return value as an Answer: a Result kept as one, any other iterable as a list."""
    if isinstance(value, Result):  # failed ids as text: a Kinesis sequence does not fit in msgpack's integers
        failed = [str(f) if isinstance(f, int) and not isinstance(f, bool) else f for f in value.failed]
        return Answer([value.items, failed, value.state], result=True)
    if value is None or isinstance(value, (str, bytes, Mapping, list)) or not isinstance(value, Iterable):
        return Answer(value)
    return Answer(list(value))


def invocation_of(batch: Batch, context: Context, event: dict[str, Any] | None) -> Invocation:
    records = None if event is not None else [WireRecord.of(r) for r in batch.records]
    return Invocation(
        pipeline=context.pipeline, shard_id=batch.shard_id, attempt=context.attempt, timeout=context.remaining(),
        records=records, event=event, state=context.state, window=context.window, is_final=context.is_final,
        terminated_early=context.terminated_early,
    )


encoder = msgspec.msgpack.Encoder()
invocation_decoder = msgspec.msgpack.Decoder(Invocation)
answer_decoder = msgspec.msgpack.Decoder(Answer)
