"""The source protocol: a stream is a set of shards, each read by a ShardReader from a position.

Nothing in the engine knows what a Kinesis iterator or a Kafka offset is: a reader is created
after a checkpoint (or at a starting position) and hands out records in shard order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, Protocol, runtime_checkable

import msgspec

from ..records import Batch, Position, Record

if TYPE_CHECKING:
    from ..components import BuildContext
    from .assignment import Coordination
    from .checkpoint import CheckpointConfig


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


class SourceTraits(msgspec.Struct, frozen=True, kw_only=True):
    """What the engine and the failure records must know about a kind of source, declared once."""

    #: The source's ``type`` (``local``, ``kinesis``, ``dynamodb_streams``, ``kafka``...).
    kind: str
    #: The record field event filters match as data (Kinesis and DynamoDB: ``data``; Kafka: ``value``).
    filter_data_key: str = "data"
    #: The on-failure record's batch-info key (Lambda: ``KinesisBatchInfo``, ``DDBStreamBatchInfo``).
    batch_info_key: str = "KinesisBatchInfo"
    #: True when a shard's sequence numbers are consecutive integers (the local log, Kafka offsets).
    dense_sequences: bool = False


class ShardTip(NamedTuple):
    """A shard's newest sequence and the sequence just before its oldest retained record."""

    last: int
    before_first: int = 0


class ReadResult(msgspec.Struct):
    """What one read returned.

    ``shard_end`` means the shard is closed and every record of it has now been handed
    out: the engine checkpoints ``SHARD_END`` once these records are done.
    ``behind_ms`` is how far the reader is behind the tip of the shard, when known.
    ``trimmed`` counts records skipped because retention removed them before this read
    (they come before ``records``; the reader has logged their range).
    """

    #: A ``Batch`` (columnar) or a list; the engine accepts either.
    records: Sequence[Record]
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

    def start_position(self) -> Position | None:
        """Where a ``latest``/``at_timestamp`` start began, when the reader knows it before any
        record (the local log): the engine checkpoints it, so a restart does not skip ahead."""
        return None


@runtime_checkable
class Source(Protocol):
    """A named, sharded stream. Subclass it to inherit the defaults of the optional members."""

    name: str
    traits: SourceTraits
    #: The stream's ARN as Lambda's events and failure records name it ("" until known).
    stream_arn: str = ""

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

    def coordination(self, configured: CheckpointConfig | None) -> Coordination | None:
        """The checkpoint store and assigner this source brings as one pair (Kafka's consumer
        group), given the configured store; None: the pipeline builds both."""
        return None

    async def read_uncoordinated(self, shards: Sequence[ShardInfo]) -> asyncio.Task[None] | None:
        """Prepare to read ``shards`` outside any coordination (``tail``, ``replay``); a task
        that feeds the readers, to cancel when done, or None when none is needed."""
        return None

    async def shard_tips(self, shard_ids: Sequence[str]) -> dict[str, ShardTip]:
        """Each shard's tip, where the source can tell cheaply (dense sequences: the local log,
        Kafka's end offsets); Kinesis cannot (no cheap tip)."""
        return {}


class SourceConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    """A source's config: its subclass sets ``tag`` (the ``type`` in pipeline files)."""

    #: Starting positions this source lacks, each with why (a shard without checkpoint may not start there).
    unsupported_starts: ClassVar[Mapping[str, str]] = {}
    #: The only checkpoint store ``type`` this source works with (Kafka keeps its own), if any.
    own_checkpoints: ClassVar[str | None] = None

    def build(self, ctx: BuildContext) -> Source:
        raise NotImplementedError

    def stream_name(self) -> str:
        """The name the built source reports (``{stream}`` in key templates)."""
        raise NotImplementedError

    def problems(self) -> list[tuple[str, str | None]]:
        """``(field, why)`` for settings of this config that cannot work, fields relative to it."""
        return []

    def with_pipeline_start(self) -> SourceConfig:
        """This config without a starting position of its own (Kafka has one), so the pipeline's
        applies (``replay --from``)."""
        return self
