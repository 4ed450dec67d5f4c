"""The Kafka checkpoint store and group assigner on a real broker, driven by a small ShardController:
revoked partitions are stopped and committed before another member gets them, checkpoints are
committed offsets, and starting positions resolve by offset and by timestamp."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from streamfn.connectors.kafka import metadata_probe
from streamfn.connectors.kafka.group import KafkaGroupAssigner
from streamfn.connectors.kafka.offsets import KafkaCheckpointStore
from streamfn.connectors.kafka.source import KafkaSource, KafkaSourceConfig
from streamfn.protocols.checkpoint import Checkpoint
from streamfn.protocols.source import ShardInfo, StartingPosition
from streamfn.records import Position, Record
from tests.integration.kafka_util import (
    GROUP_SETTINGS,
    create_topic,
    numbered,
    produce,
    unique,
    wait_for,
)

PARTITIONS = 4


class Member:
    """One group member: a source, its checkpoint store and assigner, and a controller that reads
    each started shard into ``records`` and, when stopped, checkpoints what it read."""

    def __init__(self, bootstrap: str, topic: str, group: str, stop_delay: float = 0.0, **settings: Any) -> None:
        config = KafkaSourceConfig(bootstrap_servers=bootstrap, topic=topic, group_id=group,
                                   **{**GROUP_SETTINGS, **settings})
        self.source = KafkaSource(config, pipeline="test")
        self.store: KafkaCheckpointStore = self.source.checkpoint_store()
        self.assigner: KafkaGroupAssigner = self.source.assigner()
        self.stop_delay = stop_delay
        self.records: dict[str, list[Record]] = {}
        self.loaded: dict[str, Checkpoint | None] = {}
        self.events: list[tuple[str, str, float]] = []
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._run: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.source.open()
        await self.store.open()
        self._run = asyncio.create_task(self.assigner.run(self))

    async def close(self) -> None:
        if self._run is not None:
            self._run.cancel()
            await asyncio.gather(self._run, return_exceptions=True)
        for shard_id in list(self._readers):
            await self.stop_shard(shard_id, abandon=True)
        await self.store.close()
        await self.source.close()

    # -- ShardController ----------------------------------------------------------------------------
    async def start_shard(self, shard: ShardInfo) -> None:
        self.events.append(("start", shard.shard_id, time.monotonic()))
        self._readers[shard.shard_id] = asyncio.create_task(self._read(shard))

    async def _read(self, shard: ShardInfo) -> None:
        checkpoint = await self.store.load(shard.shard_id)
        self.loaded[shard.shard_id] = checkpoint
        reader = self.source.reader(shard, checkpoint.position if checkpoint else None, StartingPosition())
        try:
            while True:
                result = await reader.read(100, 0.2)
                self.records.setdefault(shard.shard_id, []).extend(result.records)
        finally:
            await reader.close()

    async def stop_shard(self, shard_id: str, *, abandon: bool = False) -> None:
        if abandon:
            self.events.append(("abandon", shard_id, time.monotonic()))
        task = self._readers.pop(shard_id, None)
        if task is None:
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if not abandon:
            await asyncio.sleep(self.stop_delay)  # an in-flight batch finishing
            read = self.records.get(shard_id)
            if read:
                await self.store.save(shard_id, Checkpoint(position=read[-1].position))
        self.events.append(("stopped", shard_id, time.monotonic()))

    def running_shards(self) -> set[str]:
        return set(self._readers)

    async def shard_finished(self, shard_id: str) -> bool:
        return False


@pytest.fixture
async def members() -> AsyncIterator[list[Member]]:
    started: list[Member] = []
    yield started
    for member in started:
        with contextlib.suppress(Exception):
            await member.close()


def read_count(member: Member, shard_id: str) -> int:
    return len(member.records.get(shard_id, []))


async def test_revoked_partitions_are_stopped_and_committed_before_another_member_starts_them(
    kafka_bootstrap: str, members: list[Member]
) -> None:
    topic = await create_topic(kafka_bootstrap, PARTITIONS)
    await produce(kafka_bootstrap, topic, numbered(PARTITIONS, 25))
    group = unique("g")
    first = Member(kafka_bootstrap, topic, group, stop_delay=1.0)
    members.append(first)
    await first.start()
    shard_ids = [f"{topic}-{p}" for p in range(PARTITIONS)]
    await wait_for(lambda: all(read_count(first, s) == 25 for s in shard_ids), 30, "the first member to read all")

    second = Member(kafka_bootstrap, topic, group)
    members.append(second)
    await second.start()
    await wait_for(lambda: second.assigner.settled and first.assigner.settled and len(second.loaded) > 0, 40,
                   "the group to rebalance over two members")

    moved = set(second.loaded)
    assert moved and moved <= set(shard_ids)
    for shard_id in moved:
        stopped = max(t for kind, s, t in first.events if kind == "stopped" and s == shard_id)
        started = min(t for kind, s, t in second.events if kind == "start" and s == shard_id)
        assert stopped < started  # the old owner finished (1 s of in-flight work) before the new one began
        assert second.loaded[shard_id] == Checkpoint(position=Position(24))  # and it had committed
    assert first.assigner.rebalances == 1
    # The new owner resumes after the checkpoint: nothing new to read, nothing read twice.
    await produce(kafka_bootstrap, topic, numbered(PARTITIONS, 5, start=25))
    await wait_for(lambda: all(read_count(second, s) == 5 for s in moved), 20, "the new owner to read new records")
    assert all([r.sequence for r in second.records[s]] == list(range(25, 30)) for s in moved)


async def test_a_revoke_that_cannot_finish_in_time_is_abandoned_so_the_group_moves_on(
    kafka_bootstrap: str, members: list[Member]
) -> None:
    topic = await create_topic(kafka_bootstrap, 2)
    group = unique("g")
    first = Member(kafka_bootstrap, topic, group, stop_delay=60.0, revoke_timeout=1.0)  # an in-flight batch hangs
    members.append(first)
    await first.start()
    await wait_for(lambda: len(first.loaded) == 2, 30, "the first member to own both partitions")
    second = Member(kafka_bootstrap, topic, group)
    members.append(second)
    await second.start()
    await wait_for(lambda: len(second.loaded) >= 1, 40, "the second member to be given a partition")
    abandoned = {s for kind, s, _ in first.events if kind == "abandon"}
    assert abandoned == {f"{topic}-0", f"{topic}-1"}  # both were running when the revoke began


async def test_checkpoints_are_committed_offsets_and_survive_the_member(
    kafka_bootstrap: str, members: list[Member]
) -> None:
    topic = await create_topic(kafka_bootstrap, PARTITIONS)
    await produce(kafka_bootstrap, topic, numbered(PARTITIONS, 3))
    group = unique("g")
    member = Member(kafka_bootstrap, topic, group)
    members.append(member)
    await member.start()
    await wait_for(lambda: len(member.loaded) == PARTITIONS, 30, "the partitions to be assigned")
    shard = f"{topic}-1"
    assert member.loaded[shard] is None
    await member.store.save(shard, Checkpoint(position=Position(1)))
    await member.store.flush()
    await member.close()
    members.remove(member)

    from aiokafka import AIOKafkaConsumer, TopicPartition

    probe = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    await probe.start()
    try:
        assert await probe.committed(TopicPartition(topic, 1)) == 2  # the next offset to read
        assert await probe.committed(TopicPartition(topic, 0)) is None  # never checkpointed: never committed
    finally:
        await probe.stop()

    again = Member(kafka_bootstrap, topic, group)
    members.append(again)
    await again.start()
    await wait_for(lambda: read_count(again, shard) >= 1, 30, "the restarted member to read")
    assert again.loaded[shard] == Checkpoint(position=Position(1))
    assert [r.sequence for r in again.records[shard]] == [2]


async def broker_keeps_commit_metadata(bootstrap: str, topic: str) -> bool:
    """Some Kafka-protocol brokers (Tansu) drop the metadata string of a commit (the store's own probe)."""
    options = KafkaSourceConfig(bootstrap_servers=bootstrap, topic=topic, group_id=unique("g")).consumer_options()
    return await metadata_probe.broker_keeps_commit_metadata(options, topic)


async def test_pending_batches_ride_with_the_committed_offset(kafka_bootstrap: str, members: list[Member]) -> None:
    topic = await create_topic(kafka_bootstrap, 1)
    await produce(kafka_bootstrap, topic, numbered(1, 30))
    if not await broker_keeps_commit_metadata(kafka_bootstrap, topic):
        pytest.skip("this broker drops offset commit metadata (Tansu does); a real Kafka keeps it")
    group = unique("g")
    member = Member(kafka_bootstrap, topic, group)
    members.append(member)
    await member.start()
    shard = f"{topic}-0"
    await wait_for(lambda: shard in member.loaded, 30, "the partition to be assigned")
    await member.store.save(shard, Checkpoint(position=Position(9), window_state=b"\x01\x02"))
    await member.store.record_pending(shard, Position(10), Position(19))  # durable on return
    other = KafkaCheckpointStore(member.source)
    assert await other.load(shard) == Checkpoint(position=Position(9), window_state=b"\x01\x02",
                                                 pending=((Position(10), Position(19)),))


async def test_starting_positions_by_offset_and_by_timestamp(kafka_bootstrap: str) -> None:
    topic = await create_topic(kafka_bootstrap, 1)
    await produce(kafka_bootstrap, topic, numbered(1, 10))
    await asyncio.sleep(0.05)
    middle = time.time()
    await asyncio.sleep(0.05)
    await produce(kafka_bootstrap, topic, numbered(1, 10, start=10))
    source = KafkaSource(KafkaSourceConfig(bootstrap_servers=kafka_bootstrap, topic=topic, group_id=unique("g")))
    await source.open()
    try:
        tp = source.topic_partition(f"{topic}-0")
        assert await source.start_offset(tp, None, StartingPosition("trim_horizon")) == 0
        assert await source.start_offset(tp, None, StartingPosition("at_timestamp", middle)) == 10
        assert await source.start_offset(tp, Position(4), StartingPosition("latest")) == 5  # a checkpoint wins
        assert [s.shard_id for s in await source.list_shards()] == [f"{topic}-0"]
        end = (await source.consumer.end_offsets([tp]))[tp]
        if end != 20:
            pytest.skip(f"this broker reports the log end at {end} after 20 records (Tansu does, for batched "
                        "produces); a real Kafka reports 20")
        assert await source.start_offset(tp, None, StartingPosition("latest")) == 20
        # Nothing at or after a future timestamp yet: start at the end, like "latest".
        assert await source.start_offset(tp, None, StartingPosition("at_timestamp", time.time() + 60)) == 20
    finally:
        await source.close()
