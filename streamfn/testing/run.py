"""Run a pipeline's handler over given records, in memory, and compare its output with what is expected.

The pipeline file is read as ``streamfn run`` reads it, and the real engine runs it (batching,
filters, the Lambda interface, batch item failures, retries, tumbling windows) with the source,
sinks, checkpoint store and on-failure destination swapped for the in-memory parts of
:mod:`streamfn.testing.memory`. Nothing is read from or written to the configured servers or
state folder. What ``streamfn test CONFIG --input FILE --expect FILE`` runs.
"""

from __future__ import annotations

import asyncio
import difflib
import time
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
import orjson

from ..components import BuildContext
from ..config import LoadedPipeline, load_pipeline
from ..connectors.dynamodb_streams.source import DynamoDBStreamsSource
from ..connectors.kinesis.source import KinesisSource
from ..connectors.local.produce import ndjson_records
from ..engine.pipeline import Pipeline
from ..errors import HandlerError, InputError
from ..protocols.checkpoint import CheckpointConfig, CheckpointStore
from ..protocols.destination import Destination, DestinationConfig, FailedBatch
from ..protocols.sink import Sink, SinkBatch, SinkConfig
from ..protocols.source import Source, SourceConfig
from .memory import MemoryCheckpointStore, MemoryDestination, MemorySink, MemorySource

#: What filters see as the record's data, and the failure-record shape, per source type.


class RunResult(msgspec.Struct, frozen=True):
    """What the handler produced: sink items in order, the batches they came in, on-failure records."""

    items: list[Any]
    batches: list[SinkBatch]
    failures: list[FailedBatch]
    failure_documents: list[dict[str, Any]]


class Comparison(msgspec.Struct, frozen=True):
    """The outcome of comparing a run with expected items; ``diff`` is a unified diff of JSON lines."""

    passed: bool
    expected: list[Any]
    actual: list[Any]
    diff: str


class _BuiltSource(SourceConfig, kw_only=True, tag="streamfn.testing"):
    """A config entry whose ``build`` hands out a part made beforehand (not a pipeline file type)."""

    part: Any

    def build(self, ctx: BuildContext) -> Source:
        return self.part  # type: ignore[no-any-return]

    def stream_name(self) -> str:
        return str(self.part.name)


class _BuiltSink(SinkConfig, kw_only=True, tag="streamfn.testing"):
    part: Any

    def build(self, ctx: BuildContext) -> Sink:
        return self.part  # type: ignore[no-any-return]


class _BuiltStore(CheckpointConfig, kw_only=True, tag="streamfn.testing"):
    part: Any

    def build(self, ctx: BuildContext) -> CheckpointStore:
        return self.part  # type: ignore[no-any-return]


class _BuiltDestination(DestinationConfig, kw_only=True, tag="streamfn.testing"):
    part: Any

    def build(self, ctx: BuildContext) -> Destination:
        return self.part  # type: ignore[no-any-return]


def read_records(path: str | Path, key_field: str | None = None) -> list[tuple[str, bytes]]:
    """``(partition key, data)`` per non-blank line of a JSON-lines file, as ``streamfn produce`` reads it."""
    try:
        with open(path, "rb") as stream:
            return list(ndjson_records(stream, key_field))
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None


def read_expected(path: str | Path) -> list[Any]:
    """The expected items: one JSON document per non-blank line."""
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    items = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                items.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise InputError(f"{path}: line {number}: not valid JSON: {exc}") from None
    return items


def memory_source(loaded: LoadedPipeline, shards: int = 1) -> MemorySource:
    """An empty in-memory stand-in for the pipeline's source: same stream name, same Lambda event shape
    (Kafka's shards are named ``<topic>-<partition>`` as the Kafka source names them)."""
    config = loaded.config.source
    real = config.build(loaded.context)  # never opened: only its event shape and traits are used
    kind = real.traits.kind
    name = config.stream_name()
    if isinstance(real, KinesisSource | DynamoDBStreamsSource) and not real.stream_arn:
        # The ARN comes from the service at open; stand in with the documented local form.
        service = "dynamodb" if isinstance(real, DynamoDBStreamsSource) else "kinesis"
        resource = f"table/{name}/stream/local" if service == "dynamodb" else f"stream/{name}"
        real.stream_arn = f"arn:aws:{service}:{real.region}:000000000000:{resource}"
    ids = [f"{name}-{i}" for i in range(shards)] if kind == "kafka" else shards
    return MemorySource(name, ids, lambda_event=real.lambda_event, first_sequence=0 if kind == "kafka" else 1,
                        traits=real.traits)


def add_record(source: MemorySource, partition_key: str, data: bytes) -> None:
    """Append one input record as the configured kind of source would hand it out.

    Kafka: the value, with topic, partition and key attributes. DynamoDB Streams: the line is a
    Lambda event record (``{"eventName": ..., "dynamodb": {...}}``) or just its ``dynamodb`` part
    (an INSERT); the record's data is that part, its attributes the event record. Others: the data.
    """
    if source.kind == "kafka":
        shard_ids = list(source.shards)
        shard_id = shard_ids[zlib.crc32(partition_key.encode("utf-8")) % len(shard_ids)]
        attributes = {"topic": source.name, "partition": shard_ids.index(shard_id),
                      "key": partition_key.encode("utf-8"), "headers": (), "timestamp_type": "CREATE_TIME"}
        source.append(data, partition_key, shard_id=shard_id, attributes=attributes)
        return
    if source.kind == "dynamodb_streams":
        try:
            line = orjson.loads(data)
        except orjson.JSONDecodeError:
            line = None
        if not isinstance(line, dict):
            raise InputError("a DynamoDB Streams record is a JSON object: an event record or its `dynamodb` part")
        event: dict[str, Any] = line if isinstance(line.get("dynamodb"), dict) else {
            "eventName": "INSERT", "eventVersion": "1.1", "eventSource": "aws:dynamodb", "dynamodb": line}
        change: dict[str, Any] = event["dynamodb"]
        key = orjson.dumps(change.get("Keys") or {}, option=orjson.OPT_SORT_KEYS).decode()
        source.append(orjson.dumps(change), key, attributes=event)
        return
    source.append(data, partition_key)


async def run_records(pipeline: str | Path | LoadedPipeline, records: Iterable[tuple[str, bytes]], *,
                      shards: int = 1, time_limit: float = 60.0) -> RunResult:
    """Run the pipeline's handler over ``(partition key, data)`` records until all are handled.

    Raises ``HandlerError`` when the handler keeps failing and the pipeline has no retry limit
    (the real engine would retry forever), or when ``time_limit`` seconds pass first.
    """
    loaded = pipeline if isinstance(pipeline, LoadedPipeline) else load_pipeline(pipeline)
    source = memory_source(loaded, shards)
    for partition_key, data in records:
        add_record(source, partition_key, data)
    sink, store = MemorySink(), MemoryCheckpointStore()
    destination = MemoryDestination()
    config = msgspec.structs.replace(
        loaded.config, source=_BuiltSource(part=source), sinks=[_BuiltSink(part=sink)],
        checkpoints=_BuiltStore(part=store),
        on_failure=_BuiltDestination(part=destination) if loaded.config.on_failure is not None else None,
        metrics=None,
    )
    await _run(Pipeline(LoadedPipeline(config=config, path=loaded.path)), time_limit)
    return RunResult(items=sink.items, batches=sink.batches, failures=list(destination.failures),
                     failure_documents=destination.documents)


async def _run(pipeline: Pipeline, time_limit: float) -> None:
    await pipeline.open()
    stop = asyncio.Event()
    run = asyncio.create_task(pipeline.run(stop, until_caught_up=True))
    deadline = time.monotonic() + time_limit
    problem: str | None = None
    try:
        while not run.done():
            problem = _endless_failure(pipeline)
            if problem is None and time.monotonic() > deadline:
                problem = f"the records were not all handled within {time_limit:g} s"
            if problem is not None:
                stop.set()
                break
            await asyncio.wait({run}, timeout=0.02)
        await run
    finally:
        stop.set()
        await pipeline.shutdown()
    if problem is not None:
        raise HandlerError(problem)


def _endless_failure(pipeline: Pipeline) -> str | None:
    """Why a shard is stuck, when the failure policy would retry it forever; else None."""
    if pipeline.config.retry.policy().has_limit:
        return None
    for shard_id, runner in pipeline.runners.items():
        stats = runner.stats
        if stats.blocked_since is not None and stats.retries:
            return (f"shard {shard_id} keeps failing ({stats.blocked_cause}): {stats.last_error}; "
                    "without retry.max_attempts or retry.max_record_age it would be retried forever")
    return None


def compare(expected: list[Any], actual: list[Any], *, unordered: bool = False) -> Comparison:
    """Whether ``actual`` equals ``expected`` (as JSON values; in any order with ``unordered``)."""
    def lines(items: list[Any]) -> list[str]:
        texts = [orjson.dumps(item, option=orjson.OPT_SORT_KEYS).decode("utf-8") for item in items]
        return sorted(texts) if unordered else texts

    want, got = lines(expected), lines(actual)
    diff = "\n".join(difflib.unified_diff(want, got, "expected", "actual", lineterm=""))
    return Comparison(passed=want == got, expected=expected, actual=actual, diff=diff)


def run_file(pipeline: str | Path | LoadedPipeline, input_path: str | Path, *, key_field: str | None = None,
             shards: int = 1, time_limit: float = 60.0) -> list[Any]:
    """The items the handler sends to the sinks for the records of ``input_path``, as JSON values."""
    records = read_records(input_path, key_field)
    result = asyncio.run(run_records(pipeline, records, shards=shards, time_limit=time_limit))
    return _as_json(result.items)


def check_file(pipeline: str | Path | LoadedPipeline, input_path: str | Path, expect_path: str | Path, *,
               key_field: str | None = None, unordered: bool = False, shards: int = 1,
               time_limit: float = 60.0) -> Comparison:
    """Run the handler over the records of ``input_path`` and compare the sink items with ``expect_path``.

    Both files hold one JSON document per line: the input as ``streamfn produce --input`` takes it,
    the expectation as the items the handler returns, in order.
    """
    expected = read_expected(expect_path)
    actual = run_file(pipeline, input_path, key_field=key_field, shards=shards, time_limit=time_limit)
    return compare(expected, actual, unordered=unordered)


def write_expected(path: str | Path, items: list[Any]) -> None:
    """Write ``items`` as JSON lines (``streamfn test --update``: review the file, then keep it)."""
    Path(path).write_bytes(b"".join(orjson.dumps(item) + b"\n" for item in items))


def _as_json(items: list[Any]) -> list[Any]:
    """Items as the sinks write them: bytes items are JSON text already, the rest JSON values."""
    out = []
    for item in items:
        if isinstance(item, bytes | bytearray):
            try:
                out.append(orjson.loads(item))
            except orjson.JSONDecodeError:
                out.append(bytes(item).decode("utf-8", "replace"))
        else:
            try:
                out.append(orjson.loads(orjson.dumps(item)))
            except TypeError as exc:
                raise HandlerError(f"the handler returned an item no sink can write as JSON: {exc}") from None
    return out
