"""The Kafka source: a topic is a stream, each partition a shard, read through one consumer per worker.

One ``AIOKafkaConsumer`` (auto-commit off) serves every partition this worker owns. A fetch task
calls ``getmany`` for the partitions whose bounded feed has room; each shard's reader takes from
its feed. A feed that stays full has its partition paused (``consumer.pause``) until its reader
drained half of it. The engine needs no other signal: while a shard retries a batch it does not
read, so its feed fills and the partition pauses, while the fetch task keeps polling for the
others and the member never looks idle to the group. Offsets are committed by the Kafka
checkpoint store (``streamfn.connectors.kafka.offsets``) and partitions are assigned by the consumer
group (``streamfn.connectors.kafka.group``). A feed keeps each fetch as columns (``columns``) and
a read hands the engine a columnar batch; the consumer gets aiokafka's parsed records without a
``ConsumerRecord`` each (``parsed_records``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import msgspec

from ...lambda_shapes import kafka_event
from ...protocols.assignment import Coordination
from ...protocols.source import (
    ReadResult,
    ShardInfo,
    ShardReader,
    ShardTip,
    Source,
    SourceConfig,
    SourceTraits,
    StartingPosition,
)
from ...records import Batch, Position
from . import parsed_records
from .columns import Fetched
from .columns import KafkaAttributes as KafkaAttributes  # re-exported: its public home before columns.py
from .columns import to_batch as to_batch
from .columns import to_records as to_records
from .connection import KafkaConnection
from .partitions import partition_of, shard_id_of

if TYPE_CHECKING:
    from ...components import BuildContext
    from ...protocols.checkpoint import CheckpointConfig
    from .group import KafkaGroupAssigner
    from .offsets import KafkaCheckpointStore, KafkaCheckpointStoreConfig

log = logging.getLogger("streamfn.kafka")

#: Seconds a partition's feed may stay full before the partition is paused (its shard is stuck).
PAUSE_AFTER = 0.5
#: Sleep of the fetch task while every partition with a reader is full but not yet paused.
POLL_WHILE_BLOCKED = 0.005
#: While some feed is full, ``getmany`` waits this briefly, so a feed that regains room is refilled
#: before its reader runs dry (nothing can wake a waiting ``getmany`` early).
BLOCKED_POLL_MS = 5

class KafkaSourceConfig(SourceConfig, KafkaConnection, kw_only=True, tag="kafka"):
    """A Kafka topic read by a consumer group: run several daemons with one ``group_id`` to split it."""

    bootstrap_servers: Annotated[str, msgspec.Meta(description=(
        "`host:port[,host:port...]` of the brokers to bootstrap from."))]
    topic: Annotated[str, msgspec.Meta(description=(
        "The topic to read; each partition is a shard (`<topic>-<partition>`)."))]
    group_id: Annotated[str, msgspec.Meta(description=(
        "The consumer group: offsets are committed under it, partitions shared among its members."))]
    client_id: Annotated[str, msgspec.Meta(description="The client id brokers see (logs, quotas).")] = "streamfn"
    cluster_arn: Annotated[str | None, msgspec.Meta(description=(
        "The MSK cluster's ARN: events and failure records then take Lambda's MSK shape (`aws:kafka`, "
        "`eventSourceArn`, `KafkaBatchInfo`); without it, the self-managed one (`SelfManagedKafka`)."))] = None
    starting_position: Annotated[Literal["earliest", "latest", "at_timestamp"] | None, msgspec.Meta(description=(
        "Where a partition with no committed offset starts; default: the pipeline's `starting_position` "
        "(`trim_horizon` is `earliest`)."))] = None
    starting_timestamp: Annotated[float | None, msgspec.Meta(description=(
        'Epoch seconds, with `starting_position = "at_timestamp"` (found with `offsets_for_times`).'))] = None
    session_timeout_ms: Annotated[int, msgspec.Meta(ge=1, description=(
        "Without a heartbeat for this long, the group gives this worker's partitions to others."))] = 10_000
    heartbeat_interval_ms: Annotated[int, msgspec.Meta(ge=1, description=(
        "Milliseconds between heartbeats to the group coordinator; below session_timeout_ms."))] = 3_000
    max_poll_interval_ms: Annotated[int, msgspec.Meta(ge=1, description=(
        "Most milliseconds between two polls before the group counts this worker as gone; also the time other "
        "members wait for this one during a rebalance."))] = 300_000
    revoke_timeout: Annotated[float, msgspec.Meta(gt=0, description=(
        "Seconds a rebalance waits for in-flight batches of revoked partitions before abandoning them."))] = 30.0
    fetch_max_wait_ms: Annotated[int, msgspec.Meta(ge=0, description=(
        "Milliseconds a broker may hold a fetch while it gathers fetch_min_bytes."))] = 100
    fetch_min_bytes: Annotated[int, msgspec.Meta(ge=1, description=(
        "Bytes a broker gathers before it answers a fetch (unless fetch_max_wait_ms passes first)."))] = 1
    fetch_max_bytes: Annotated[int, msgspec.Meta(ge=1, description=(
        "Most bytes in one fetch answer, over all partitions."))] = 52_428_800
    max_partition_fetch_bytes: Annotated[int, msgspec.Meta(ge=1, description=(
        "Most bytes in one fetch answer per partition."))] = 1_048_576
    max_poll_records: Annotated[int, msgspec.Meta(ge=1, description=(
        "Records one `getmany` may return, over all partitions."))] = 5_000
    queue_max_records: Annotated[int, msgspec.Meta(ge=1, description=(
        "Records buffered per partition before it is paused (it resumes when half is read)."))] = 10_000
    isolation_level: Annotated[Literal["read_uncommitted", "read_committed"], msgspec.Meta(description=(
        "`read_committed` skips records of aborted transactions and waits for open ones."))] = "read_uncommitted"
    def __post_init__(self) -> None:
        if self.starting_position == "at_timestamp" and self.starting_timestamp is None:
            raise ValueError("starting_position 'at_timestamp' needs starting_timestamp")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be below session_timeout_ms")

    own_checkpoints: ClassVar[str | None] = "kafka"

    def build(self, ctx: BuildContext) -> KafkaSource:
        return KafkaSource(self, pipeline=ctx.pipeline, resolve=lambda p: str(ctx.resolve(p)))

    def stream_name(self) -> str:
        return self.topic

    def with_pipeline_start(self) -> KafkaSourceConfig:
        return msgspec.structs.replace(self, starting_position=None, starting_timestamp=None)

    def problems(self) -> list[tuple[str, str | None]]:
        return [("starting_timestamp", "is used only with source.starting_position = 'at_timestamp'"
                 if self.starting_timestamp is not None and self.starting_position != "at_timestamp" else None)]

    def consumer_options(self, resolve: Callable[[str], str] = str) -> dict[str, Any]:
        """Keyword arguments for ``AIOKafkaConsumer`` (SSL files resolved against the config's folder)."""
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "group_id": self.group_id,
            "enable_auto_commit": False,
            # Only used when a reader has not positioned its partition yet; readers seek explicitly.
            "auto_offset_reset": "earliest",
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "max_poll_interval_ms": self.max_poll_interval_ms,
            "fetch_max_wait_ms": self.fetch_max_wait_ms,
            "fetch_min_bytes": self.fetch_min_bytes,
            "fetch_max_bytes": self.fetch_max_bytes,
            "max_partition_fetch_bytes": self.max_partition_fetch_bytes,
            "max_poll_records": self.max_poll_records,
            "isolation_level": self.isolation_level,
            **self.connection_options(resolve),
        }


class PartitionFeed:
    """Messages fetched for one partition and not yet read, bounded by a record count.

    ``next_offset`` drops anything the consumer returns from before the reader's position
    (a stale fetch after a seek): the reader sees each offset once and in order. Each fetch is
    kept as columns (``columns.Fetched``): the consumer's per-message objects die at once, so a
    full feed costs the garbage collector nothing, and a read hands the engine a columnar batch.
    """

    def __init__(self, topic: str, partition: int, capacity: int) -> None:
        self.topic, self.partition = topic, partition
        self.shard_id = shard_id_of(topic, partition)
        self.capacity = capacity
        self.next_offset: int | None = None  # None: the reader has not positioned the partition yet
        self.size = 0
        #: Since when the feed has been full (None: it has room).
        self.full_since: float | None = None
        #: The partition is paused because this feed stayed full.
        self.paused = False
        self._chunks: deque[Fetched] = deque()
        self._head = 0
        self.arrived = asyncio.Event()

    @property
    def positioned(self) -> bool:
        return self.next_offset is not None

    def put(self, messages: list[Any]) -> None:
        """File ``messages`` (one partition, in order)."""
        expected = self.next_offset
        if expected is None:
            return
        if messages[0].offset < expected:
            messages = [m for m in messages if m.offset >= expected]
            if not messages:
                return
        self._chunks.append(Fetched.of(messages, self.topic, self.partition))
        self.size += len(messages)
        self.next_offset = messages[-1].offset + 1
        self.arrived.set()

    def take(self, limit: int) -> Batch:
        """Up to ``limit`` records, oldest first, as one columnar batch."""
        parts: list[Fetched] = []
        taken = 0
        chunks = self._chunks
        while chunks and taken < limit:
            chunk, head = chunks[0], self._head
            end = head + limit - taken
            if end >= len(chunk):
                parts.append(chunk.part(head, len(chunk)) if head else chunk)
                chunks.popleft()
                self._head = 0
            else:
                parts.append(chunk.part(head, end))
                self._head = end
            taken += len(parts[-1])
        self.size -= taken
        if self.size < self.capacity:
            self.full_since = None
        if not chunks:
            self.arrived.clear()
        if not parts:
            return Batch(self.shard_id, [])
        return Fetched.join(parts).batch(self.shard_id)

    def reset(self, next_offset: int) -> None:
        self._chunks.clear()
        self._head = 0
        self.size = 0
        self.full_since = None
        self.next_offset = next_offset
        self.arrived.clear()


#: Lambda's shapes: an MSK cluster (named by its ARN) and a self-managed cluster (bootstrap servers only).
MSK_TRAITS = SourceTraits(kind="kafka", filter_data_key="value", batch_info_key="KafkaBatchInfo",
                          dense_sequences=True)
SELF_MANAGED_TRAITS = SourceTraits(kind="kafka", filter_data_key="value", batch_info_key="SelfManagedKafkaBatchInfo",
                                   dense_sequences=True)


class KafkaSource(Source):
    """One topic through one consumer; readers per partition, fed by one fetch task (see module doc)."""

    traits = MSK_TRAITS

    def __init__(self, config: KafkaSourceConfig, *, pipeline: str = "", resolve: Any = str) -> None:
        self.config = config
        self.name = config.topic
        self.stream_arn = config.cluster_arn or ""
        self.traits = SELF_MANAGED_TRAITS if config.cluster_arn is None else MSK_TRAITS
        self.pipeline = pipeline
        self._resolve = resolve
        self._consumer: Any = None
        self.closing = False
        self._feeds: dict[Any, PartitionFeed] = {}
        self._store: KafkaCheckpointStore | None = None

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def consumer(self) -> Any:
        """The started AIOKafkaConsumer (after ``open``)."""
        if self._consumer is None:
            raise RuntimeError("KafkaSource used before open()")
        return self._consumer

    async def open(self) -> None:
        if self._consumer is not None:
            return
        from aiokafka import AIOKafkaConsumer

        parsed_records.install()
        # keep_value marks this consumer: its fetches hand over parsed records, not ConsumerRecords.
        consumer = AIOKafkaConsumer(**self.consumer_options(), value_deserializer=parsed_records.keep_value)
        await consumer.start()
        self._consumer = consumer

    def consumer_options(self) -> dict[str, Any]:
        """This source's ``AIOKafkaConsumer`` arguments (also for other clients of the same brokers)."""
        return self.config.consumer_options(self._resolve)

    async def close(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        self.closing = True  # a rebalance callback during stop() must not start or stop shards
        try:
            await consumer.stop()
        finally:
            self._consumer = None

    # -- parts that come with this source ----------------------------------------------------
    def assigner(self) -> KafkaGroupAssigner:
        """The consumer group decides which partitions this worker runs."""
        from .group import KafkaGroupAssigner

        return KafkaGroupAssigner(self, revoke_timeout=self.config.revoke_timeout)

    def checkpoint_store(self, config: KafkaCheckpointStoreConfig | None = None) -> KafkaCheckpointStore:
        """Checkpoints as the group's committed offsets, committed through this source's consumer."""
        from .offsets import KafkaCheckpointStore, KafkaCheckpointStoreConfig

        self._store = KafkaCheckpointStore(self, **(config or KafkaCheckpointStoreConfig()).store_options())
        return self._store

    @property
    def store(self) -> KafkaCheckpointStore | None:
        return self._store

    @property
    def opened(self) -> bool:
        """True between ``open`` and ``close``."""
        return self._consumer is not None

    def coordination(self, configured: CheckpointConfig | None) -> Coordination | None:
        """The group's committed offsets and the group's assignment, as one pair."""
        from .offsets import KafkaCheckpointStoreConfig

        if configured is not None and not isinstance(configured, KafkaCheckpointStoreConfig):
            return None  # refused when the config is loaded
        return Coordination(self.checkpoint_store(configured), self.assigner())

    async def read_uncoordinated(self, shards: Sequence[ShardInfo]) -> asyncio.Task[None] | None:
        """Assign ``shards``' partitions by hand (the group is never joined, nothing is committed)
        and run the fetch task beside the readers."""
        partitions = [self.topic_partition(shard.shard_id) for shard in shards]
        consumer = self.consumer
        consumer.assign(partitions)
        if partitions:
            consumer.pause(*partitions)  # each reader resumes its partition once it sought its start
        return asyncio.create_task(self.fetch(), name=f"fetch:{self.name}")

    async def shard_tips(self, shard_ids: Sequence[str]) -> dict[str, ShardTip]:
        partitions = {shard_id: self.topic_partition(shard_id) for shard_id in shard_ids}
        ends = await self.consumer.end_offsets(list(partitions.values()))
        starts = await self.consumer.beginning_offsets(list(partitions.values()))
        return {shard_id: ShardTip(int(ends[tp]) - 1, int(starts[tp]) - 1) for shard_id, tp in partitions.items()}

    # -- Source protocol ---------------------------------------------------------------------
    async def list_shards(self) -> list[ShardInfo]:
        await self.consumer.topics()  # refreshes metadata
        partitions = self.consumer.partitions_for_topic(self.name) or set()
        return [ShardInfo(shard_id_of(self.name, p)) for p in sorted(partitions)]

    def reader(self, shard: ShardInfo, after: Position | None, start: StartingPosition) -> KafkaPartitionReader:
        tp = self.topic_partition(shard.shard_id)
        feed = PartitionFeed(tp.topic, tp.partition, self.config.queue_max_records)
        self._feeds[tp] = feed  # replaces a previous reader's feed: that reader is done
        with contextlib.suppress(Exception):  # not assigned (any more): the reader finds out when it seeks
            self.consumer.pause(tp)
        return KafkaPartitionReader(self, tp, shard.shard_id, feed, after, self._starting(start))

    def lambda_event(self, batch: Batch) -> dict[str, Any]:
        if self.config.cluster_arn is None:
            return kafka_event(batch, self.config.bootstrap_servers, event_source="SelfManagedKafka")
        return kafka_event(batch, self.config.bootstrap_servers, self.config.cluster_arn)

    # -- helpers for readers, the assigner and the checkpoint store -------------------------------
    def topic_partition(self, shard_id: str) -> Any:
        from aiokafka import TopicPartition

        return TopicPartition(self.name, partition_of(self.name, shard_id))

    def assigned(self) -> set[Any]:
        return set(self.consumer.assignment())

    def _starting(self, start: StartingPosition) -> StartingPosition:
        kind = self.config.starting_position
        if kind is None or start.position is not None:  # a named record wins over the configured start
            return start
        return StartingPosition("trim_horizon" if kind == "earliest" else kind, self.config.starting_timestamp)

    async def start_offset(self, tp: Any, after: Position | None, start: StartingPosition) -> int:
        """The first offset a reader reads: just after its checkpoint, else at the named record
        (``at_sequence``), else by the starting position."""
        if after is not None:
            return max(after.sequence + 1, 0)
        if start.position is not None:
            return start.position.sequence
        consumer = self.consumer
        if start.kind == "at_timestamp":
            assert start.timestamp is not None
            found = (await consumer.offsets_for_times({tp: int(start.timestamp * 1000)})).get(tp)
            if found is not None and found.offset >= 0 and found.timestamp >= 0:
                return int(found.offset)
            start = StartingPosition("latest")  # nothing at or after the timestamp yet
        if start.kind == "latest":
            return int((await consumer.end_offsets([tp]))[tp])
        return int((await consumer.beginning_offsets([tp]))[tp])

    def detach(self, tp: Any, feed: PartitionFeed) -> None:
        """A reader closed: stop fetching its partition (unless a newer reader took it over)."""
        if self._feeds.get(tp) is feed:
            del self._feeds[tp]
            with contextlib.suppress(Exception):
                self.consumer.pause(tp)

    def drained(self, tp: Any, feed: PartitionFeed) -> None:
        """A reader took records: resume a partition paused because its feed stayed full."""
        if feed.paused and feed.size <= feed.capacity // 2 and self._feeds.get(tp) is feed:
            feed.paused = False
            with contextlib.suppress(Exception):
                self.consumer.resume(tp)

    # -- the fetch task (run by the group assigner once subscribed) -------------------------------
    async def fetch(self) -> None:
        """Poll the consumer forever and file records into the partitions' feeds.

        Only partitions whose feed has room are asked for records: the others' records wait in
        the consumer's buffer, which holds one fetch per partition. A feed that stays full for
        ``PAUSE_AFTER`` (its shard is not reading: a batch is being retried) gets its partition
        paused, and resumed once its reader drained half of it. Polling never stops, even when
        every partition is paused, so the group keeps seeing a live member.
        """
        consumer, max_records = self.consumer, self.config.max_poll_records
        from aiokafka.errors import KafkaError

        delay = 0.1
        while True:
            ready, blocked = self._ready_partitions(time.monotonic())
            if not ready and blocked:
                await asyncio.sleep(POLL_WHILE_BLOCKED)  # well inside max_poll_interval_ms
                continue
            try:
                fetched = await consumer.getmany(*ready, timeout_ms=BLOCKED_POLL_MS if blocked else 200,
                                                 max_records=max_records)
            except KafkaError as exc:
                log.warning("kafka fetch failed; retrying in %.1fs", delay,
                            extra={"pipeline": self.pipeline, "stream": self.name, "error": repr(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            for tp, messages in fetched.items():
                feed = self._feeds.get(tp)
                if feed is not None and messages:
                    feed.put(messages)  # no feed: the partition's next reader seeks to its own start

    def _ready_partitions(self, now: float) -> tuple[list[Any], bool]:
        """Partitions with room in their feed, and whether any feed is full; pauses long-full ones."""
        ready: list[Any] = []
        blocked = False
        for tp, feed in self._feeds.items():
            if not feed.positioned or feed.paused:
                continue
            if feed.size < feed.capacity:
                ready.append(tp)
                continue
            blocked = True
            if feed.full_since is None:
                feed.full_since = now
            elif now - feed.full_since >= PAUSE_AFTER:
                feed.paused = True
                with contextlib.suppress(Exception):
                    self.consumer.pause(tp)
        return ready, blocked


class KafkaPartitionReader(ShardReader):
    """Reads one partition from its feed, in offset order; positions the partition on first read."""

    def __init__(
        self, source: KafkaSource, tp: Any, shard_id: str, feed: PartitionFeed,
        after: Position | None, start: StartingPosition,
    ) -> None:
        self._source = source
        self._tp = tp
        self._shard_id = shard_id
        self._feed = feed
        self._after = after
        self._start = start

    async def _position(self) -> bool:
        """Seek the partition to this reader's start and let the fetch task fill the feed."""
        from aiokafka.errors import IllegalStateError, KafkaError

        source, tp = self._source, self._tp
        try:
            offset = await source.start_offset(tp, self._after, self._start)
            source.consumer.seek(tp, offset)
        except (IllegalStateError, KafkaError) as exc:  # revoked meanwhile, or a transient error
            log.warning("cannot position partition yet", extra={"pipeline": source.pipeline,
                                                                 "shard": self._shard_id, "error": repr(exc)})
            return False
        self._feed.reset(offset)
        source.consumer.resume(tp)
        return True

    async def read(self, max_records: int, wait: float) -> ReadResult:
        feed = self._feed
        if not feed.positioned and not await self._position():
            await asyncio.sleep(min(wait, 0.5))
            return ReadResult([])
        if not feed.size and wait > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await feed.arrived.wait()
        records = feed.take(max_records)
        self._source.drained(self._tp, feed)
        if not records:
            return ReadResult([], behind_ms=0.0)
        behind = max(0.0, (time.time() - records.arrival_at(-1)) * 1000.0) if feed.size else 0.0
        return ReadResult(records, behind_ms=behind)

    async def close(self) -> None:
        self._source.detach(self._tp, self._feed)
