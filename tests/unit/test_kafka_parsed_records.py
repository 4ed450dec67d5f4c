"""The hook that hands the Kafka source aiokafka's parsed records without a ConsumerRecord each
(streamfn/connectors/kafka/parsed_records.py), pinned against the installed aiokafka: real record
batches go through aiokafka's own ``PartitionRecords`` with and without the source's mark, and the
records a handler sees must be identical. A release that moves the hooked method fails here first."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

aiokafka = pytest.importorskip("aiokafka")

from aiokafka.consumer.fetcher import PartitionRecords  # noqa: E402
from aiokafka.record.default_records import DefaultRecordBatchBuilder  # noqa: E402
from aiokafka.record.memory_records import MemoryRecords  # noqa: E402
from aiokafka.structs import ConsumerRecord, TopicPartition  # noqa: E402

from streamfn.connectors.kafka import parsed_records  # noqa: E402
from streamfn.connectors.kafka.source import PartitionFeed  # noqa: E402

TP = TopicPartition("clicks", 3)


def record_batches(rows: list[tuple[bytes | None, bytes | None, int, list[tuple[str, bytes]]]]) -> bytes:
    """Kafka's wire format (v2 record batches of up to 4 records), as a broker returns it."""
    out = b""
    for start in range(0, len(rows), 4):
        builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0, producer_id=-1,
                                            producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
        for delta, (key, value, timestamp, headers) in enumerate(rows[start : start + 4]):
            builder.append(delta, timestamp=timestamp, key=key, value=value, headers=headers)
        batch = bytearray(builder.build())
        batch[0:8] = start.to_bytes(8, "big")  # the batch's base offset
        out += bytes(batch)
    return out


def fetched(buffer: bytes, deserializer: Any) -> list[Any]:
    """What aiokafka's fetcher makes of one partition's fetch answer for a consumer."""
    return list(PartitionRecords(TP, MemoryRecords(buffer), [], 0, None, deserializer, True, 0))


def test_the_hooked_method_is_where_the_fetcher_makes_each_consumer_record() -> None:
    assert parsed_records.install()
    unpack = inspect.getsource(PartitionRecords._unpack_records)
    assert "self._consumer_record(tp, record)" in unpack
    init = inspect.getsource(PartitionRecords.__init__)
    assert "self._value_deserializer = value_deserializer" in init


rows = st.lists(st.tuples(st.one_of(st.none(), st.binary(max_size=6)), st.one_of(st.none(), st.binary(max_size=8)),
                          st.sampled_from([1_700_000_000_123, 0]),
                          st.lists(st.tuples(st.text(max_size=3), st.binary(max_size=3)), max_size=2)),
                min_size=1, max_size=20)


@settings(max_examples=40, deadline=None)
@given(rows)
def test_marked_and_unmarked_fetches_give_the_same_records(found: list[Any]) -> None:
    parsed_records.install()
    buffer = record_batches(found)
    plain = fetched(buffer, None)
    assert all(type(m) is ConsumerRecord for m in plain)  # every other consumer: unchanged
    marked = fetched(buffer, parsed_records.keep_value)
    assert not any(isinstance(m, ConsumerRecord) for m in marked)
    feeds = []
    for messages in (plain, marked):
        feed = PartitionFeed("clicks", 3, capacity=1000)
        feed.reset(0)
        feed.put(messages)
        feeds.append(feed.take(1000))
    assert len(feeds[1]) == len(found)
    assert list(feeds[0]) == list(feeds[1])
    for record, (key, value, _, headers) in zip(feeds[1], found, strict=True):
        assert record.data == (value or b"") and record.attributes is not None
        assert record.attributes["key"] == key and record.attributes["headers"] == tuple(headers)
