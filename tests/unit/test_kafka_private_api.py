"""The one private aiokafka member streamfn uses, pinned: a new aiokafka that moves it fails here first.

``AIOKafkaConsumer.committed()`` returns only the offset; the Kafka checkpoint store needs the
commit's metadata too (pending batch bounds, window state), which the group coordinator's
``fetch_committed_offsets`` returns. tests/integration/test_kafka_checkpoints.py reads it back
from a real broker.
"""

from __future__ import annotations

import inspect

import pytest

aiokafka = pytest.importorskip("aiokafka")


def test_a_started_group_consumer_keeps_its_coordinator_as_coordinator() -> None:
    from aiokafka.consumer.group_coordinator import GroupCoordinator

    start = inspect.getsource(aiokafka.AIOKafkaConsumer.start)
    assert "self._coordinator = GroupCoordinator(" in start
    assert inspect.iscoroutinefunction(GroupCoordinator.fetch_committed_offsets)
    assert list(inspect.signature(GroupCoordinator.fetch_committed_offsets).parameters) == ["self", "partitions"]


def test_the_coordinator_answers_offsets_with_their_metadata() -> None:
    from aiokafka.structs import OffsetAndMetadata

    assert OffsetAndMetadata._fields[:2] == ("offset", "metadata")
