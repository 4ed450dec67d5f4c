"""The source protocol: a stream is a set of shards, each read by a ShardReader from a position.

Nothing in the engine knows what a Kinesis iterator or a Kafka offset is: a reader is created
after a checkpoint (or at a starting position) and hands out records in shard order.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

import msgspec

from ..records import Batch, Position, Record


class ShardInfo(msgspec.Struct, frozen=True):
    """A shard as its source lists it. ``parent_ids`` must be fully processed before it is read."""

    shard_id: str
    parent_ids: tuple[str, ...] = ()


class StartingPosition(msgspec.Struct, frozen=True):
    """Where a reader starts when it is given no position to continue after.

    ``at_sequence`` starts AT ``position`` (inclusive): a record this source handed out earlier,
    e.g. the first record of a batch to form again after a restart. Sources whose sequence
    numbers are not dense (Kinesis, DynamoDB Streams) accept only numbers they handed out, so the
    engine never computes a position by arithmetic; it names a real record and starts at it.
    """

    kind: Literal["trim_horizon", "latest", "at_timestamp", "at_sequence"] = "trim_horizon"
    timestamp: float | None = None
    position: Position | None = None

    def __post_init__(self) -> None:
        if (self.kind == "at_sequence") != (self.position is not None):
            raise ValueError("a position is given exactly when kind is 'at_sequence'")


class ReadResult(msgspec.Struct):
    """What one read returned.

    ``shard_end`` means the shard is closed and every record of it has now been handed
    out: the engine checkpoints ``SHARD_END`` once these records are done.
    ``behind_ms`` is how far the reader is behind the tip of the shard, when known.
    ``trimmed`` counts records skipped because retention removed them before this read
    (they come before ``records``; the reader has logged their range).
    """

    records: list[Record]
    shard_end: bool = False
    behind_ms: float | None = None
    trimmed: int = 0


@runtime_checkable
class ShardReader(Protocol):
    """Reads one shard in order. One reader per shard runner; never shared between tasks."""

    async def read(self, max_records: int, wait: float) -> ReadResult:
        """Up to ``max_records`` records following the last ones returned.

        Waits at most ``wait`` seconds for the first record; an empty answer is normal.
        Transient failures (throttling, timeouts, an expired iterator) are retried inside,
        from the last record delivered, never from the starting position.
        """
        ...

    async def close(self) -> None: ...


@runtime_checkable
class Source(Protocol):
    """A named, sharded stream."""

    name: str

    async def open(self) -> None: ...

    async def list_shards(self) -> list[ShardInfo]:
        """Every shard that exists now, open or closed, parents listed before children."""
        ...

    def reader(self, shard: ShardInfo, after: Position | None, start: StartingPosition) -> ShardReader:
        """A reader that starts strictly after ``after``, or at ``start`` when ``after`` is None.

        Every source supports every ``start`` kind, ``at_sequence`` included."""
        ...

    def lambda_event(self, batch: Batch) -> dict[str, Any]:
        """The event an unmodified AWS Lambda handler for this kind of source would receive."""
        ...

    async def close(self) -> None: ...
