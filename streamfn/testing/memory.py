"""In-memory parts for handler tests: a source, a sink, a checkpoint store and an on-failure destination.

Each keeps the same contract as the real parts (tests/contract/ runs the real ones), so a handler
tested over them meets the same engine: batching, filters, retries, windows, batch item failures.
Nothing here touches a disk or a network; state lives as long as the object.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import orjson

from ..connectors.shared.failure_record import failure_record
from ..errors import SinkError
from ..lambda_shapes import kinesis_event
from ..protocols.checkpoint import Checkpoint, CheckpointStore, advance, with_pending
from ..protocols.destination import Destination, FailedBatch
from ..protocols.sink import Sink, SinkBatch
from ..protocols.source import ReadResult, ShardInfo, ShardReader, Source, SourceTraits, StartingPosition
from ..records import Batch, Position, Record

LambdaEvent = Callable[[Batch], dict[str, Any]]


def shard_name(index: int) -> str:
    """The id of the ``index``-th shard of a MemorySource, as the local log names its shards."""
    return f"shard-{index:04d}"


class MemorySource(Source):
    """A sharded stream held in lists. Records are appended by partition key (hashed to a shard, as
    the local log does) or to a named shard; sequences count up from ``first_sequence`` in every shard.

    ``kind`` and ``filter_data_key`` say which real source it stands for (``kinesis``: filters see
    ``data``; ``kafka``: ``value``; ``dynamodb_streams``: ``dynamodb``), and ``lambda_event`` builds
    the event an unmodified Lambda handler receives (Kinesis-shaped unless given).
    """

    def __init__(self, name: str = "memory", shards: int | Sequence[str] = 1, *, kind: str = "kinesis",
                 filter_data_key: str = "data", lambda_event: LambdaEvent | None = None,
                 first_sequence: int = 1, traits: SourceTraits | None = None) -> None:
        """``shards``: how many (named ``shard-0000``...), or their ids. ``first_sequence``: the
        sequence of each shard's first record (1 as in the local log, 0 as a Kafka offset).
        ``traits``: the real source's, taken whole (``kind`` and ``filter_data_key`` are then ignored)."""
        ids = [shard_name(i) for i in range(shards)] if isinstance(shards, int) else list(shards)
        if not ids or len(set(ids)) != len(ids):
            raise ValueError("a MemorySource needs at least one shard, each with its own id")
        self.name = name
        batch_info = "DDBStreamBatchInfo" if kind == "dynamodb_streams" else "KinesisBatchInfo"
        self.traits = traits or SourceTraits(kind=kind, filter_data_key=filter_data_key,
                                             batch_info_key=batch_info, dense_sequences=True)
        self.shards: dict[str, list[Record]] = {shard_id: [] for shard_id in ids}
        self.first_sequence = first_sequence
        self._arrived = {shard_id: asyncio.Event() for shard_id in self.shards}
        self._lambda_event = lambda_event or self._kinesis_event
        self.opened = self.closed = False

    @property
    def kind(self) -> str:
        """Which real source this one stands for."""
        return self.traits.kind

    def append(self, data: bytes, partition_key: str = "", *, shard_id: str | None = None,
               arrival_time: float | None = None, attributes: dict[str, Any] | None = None) -> Record:
        """Add one record and return it; readers waiting for records wake up."""
        if shard_id is None:
            ids = list(self.shards)
            shard_id = ids[zlib.crc32(partition_key.encode("utf-8")) % len(ids)]
        elif shard_id not in self.shards:
            raise KeyError(f"no shard {shard_id!r} in MemorySource {self.name!r}: it has {sorted(self.shards)}")
        records = self.shards[shard_id]
        record = Record(shard_id, len(records) + self.first_sequence, partition_key, data,
                        time.time() if arrival_time is None else arrival_time, attributes=attributes)
        records.append(record)
        self._arrived[shard_id].set()
        return record

    def extend(self, records: Iterable[tuple[str, bytes]]) -> list[Record]:
        """Append ``(partition_key, data)`` pairs in order (what ``streamfn produce`` takes)."""
        return [self.append(data, key) for key, data in records]

    async def open(self) -> None:
        self.opened = True

    async def list_shards(self) -> list[ShardInfo]:
        return [ShardInfo(shard_id) for shard_id in self.shards]

    def reader(self, shard: ShardInfo, after: Position | None, start: StartingPosition) -> MemoryShardReader:
        return MemoryShardReader(self, shard.shard_id, self._start_index(shard.shard_id, after, start))

    def lambda_event(self, batch: Batch) -> dict[str, Any]:
        return self._lambda_event(batch)

    async def close(self) -> None:
        self.closed = True

    async def wait_for_records(self, shard_id: str, held: int, seconds: float) -> None:
        """Return once ``shard_id`` holds more than ``held`` records, or after ``seconds``."""
        arrived = self._arrived[shard_id]
        arrived.clear()
        if len(self.shards[shard_id]) > held or seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await arrived.wait()

    def _start_index(self, shard_id: str, after: Position | None, start: StartingPosition) -> int:
        """The list index of the first record the reader hands out."""
        records = self.shards[shard_id]
        if after is not None:
            return sum(1 for r in records if r.position <= after)
        if start.kind == "at_sequence":
            assert start.position is not None
            return sum(1 for r in records if r.position < start.position)
        if start.kind == "latest":
            return len(records)
        if start.kind == "at_timestamp" and start.timestamp is not None:
            return next((i for i, r in enumerate(records) if r.arrival_time >= start.timestamp), len(records))
        return 0

    def _kinesis_event(self, batch: Batch) -> dict[str, Any]:
        return kinesis_event(batch, f"arn:aws:kinesis:local:000000000000:stream/{self.name}", "local")


class MemoryShardReader(ShardReader):
    """Reads one shard of a MemorySource in order."""

    def __init__(self, source: MemorySource, shard_id: str, index: int) -> None:
        self._source = source
        self._shard_id = shard_id
        self._records = source.shards[shard_id]
        self._index = index
        self.closed = False

    async def read(self, max_records: int, wait: float) -> ReadResult:
        if self._index >= len(self._records):
            await self._source.wait_for_records(self._shard_id, self._index, wait)
        taken = self._records[self._index:self._index + max_records]
        self._index += len(taken)
        return ReadResult(taken, behind_ms=0.0)

    async def close(self) -> None:
        self.closed = True


class MemorySink(Sink):
    """Keeps every batch it is given, keyed by the batch's bounds as the object-store sinks key
    their objects: a batch written again (a retry, a replay) replaces itself instead of adding."""

    keyed_by_batch: ClassVar[bool] = True

    def __init__(self) -> None:
        self._batches: dict[tuple[str, Position, Position, int, bool], SinkBatch] = {}
        self.writes = 0
        self.opened = self.closed = False

    async def open(self) -> None:
        self.opened = True

    async def write(self, batch: SinkBatch) -> None:
        """Raises ``SinkError`` for an item no real sink can write (not JSON), as they do."""
        for index, item in enumerate(batch.items):
            if not isinstance(item, bytes | bytearray):
                try:
                    orjson.dumps(item)
                except TypeError as exc:
                    raise SinkError(f"item {index} of shard {batch.shard_id} cannot be written as JSON: {exc}") \
                        from None
        self._batches[(batch.shard_id, batch.first, batch.last, batch.lane, batch.window_final)] = batch
        self.writes += 1

    async def close(self) -> None:
        self.closed = True

    @property
    def batches(self) -> list[SinkBatch]:
        """Stored batches by shard, then position (a window's final output after its last batch)."""
        return [self._batches[key] for key in sorted(self._batches)]

    @property
    def items(self) -> list[Any]:
        """Every stored item, batch after batch in the order of ``batches``."""
        return [item for batch in self.batches for item in batch.items]


class MemoryCheckpointStore(CheckpointStore):
    """Checkpoints in a dict. ``flush`` is a no-op: everything saved is at once what ``load`` returns."""

    def __init__(self) -> None:
        self.checkpoints: dict[str, Checkpoint] = {}

    async def open(self) -> None:
        return None

    async def load(self, shard_id: str) -> Checkpoint | None:
        return self.checkpoints.get(shard_id)

    async def save(self, shard_id: str, checkpoint: Checkpoint) -> None:
        self.checkpoints[shard_id] = advance(self.checkpoints.get(shard_id), checkpoint)

    async def record_pending(self, shard_id: str, first: Position, last: Position) -> None:
        recorded = with_pending(self.checkpoints.get(shard_id), first, last)
        if recorded is not None:
            self.checkpoints[shard_id] = recorded

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        return None


class MemoryDestination(Destination):
    """On-failure records in a list, as Lambda's failure documents (``documents``) and as sent."""

    def __init__(self) -> None:
        self.failures: list[FailedBatch] = []

    async def open(self) -> None:
        return None

    async def send(self, failure: FailedBatch) -> None:
        self.failures.append(failure)

    async def close(self) -> None:
        return None

    @property
    def documents(self) -> list[dict[str, Any]]:
        return [failure_record(failure) for failure in self.failures]
