"""Pins the aiokafka behaviour streamfn's Kafka checkpoint store relies on (streamfn/checkpoints/kafka.py).

The public ``AIOKafkaConsumer.committed()`` returns the offset alone and drops the commit's metadata
string, where the store keeps pending batch bounds and window state. So the store calls the private
``consumer._coordinator.fetch_committed_offsets([tp])``. If an aiokafka upgrade renames or reshapes
it, these tests fail first, naming what changed, instead of checkpoints silently losing their extras.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.integration.kafka_util import create_topic, unique


@pytest.fixture
async def consumer(kafka_bootstrap: str) -> AsyncIterator[Any]:
    from aiokafka import AIOKafkaConsumer

    started = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=unique("pin"), enable_auto_commit=False)
    await started.start()
    try:
        yield started
    finally:
        await started.stop()


def test_the_coordinator_call_exists_with_the_shape_the_store_calls() -> None:
    from aiokafka.consumer.group_coordinator import GroupCoordinator

    method = GroupCoordinator.fetch_committed_offsets
    assert inspect.iscoroutinefunction(method)
    assert list(inspect.signature(method).parameters) == ["self", "partitions"]


async def test_a_started_consumer_has_a_coordinator_that_returns_offset_and_metadata(
    kafka_bootstrap: str, consumer: Any
) -> None:
    from aiokafka import TopicPartition
    from aiokafka.consumer.group_coordinator import GroupCoordinator
    from aiokafka.structs import OffsetAndMetadata

    topic = await create_topic(kafka_bootstrap, 2, prefix="pin")
    committed_tp, other_tp = TopicPartition(topic, 0), TopicPartition(topic, 1)
    assert isinstance(consumer._coordinator, GroupCoordinator)  # the attribute the store reads

    before = await consumer._coordinator.fetch_committed_offsets([committed_tp])
    assert isinstance(before, dict)
    found = before.get(committed_tp)
    assert found is None or found.offset < 0  # nothing committed: the store reads both as "none"

    consumer.assign([committed_tp, other_tp])  # what the store commits through, by hand or by the group
    await consumer.commit({committed_tp: OffsetAndMetadata(42, '{"v":1}')})
    answer = await consumer._coordinator.fetch_committed_offsets([committed_tp, other_tp])
    entry = answer[committed_tp]
    assert isinstance(entry, OffsetAndMetadata)
    assert entry.offset == 42 and isinstance(entry.offset, int)
    assert entry.metadata in ('{"v":1}', "")  # "" only from brokers that drop metadata (Tansu)
    other = answer.get(other_tp)
    assert other is None or other.offset < 0

    # The public call gives the offset alone: why the store does not use it.
    assert await consumer.committed(committed_tp) == 42
