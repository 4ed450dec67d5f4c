"""The Kafka source's columnar batches: the records a handler sees are exactly the ones the source
built per message before, however fetches are cut into reads, and the feed keeps none of the
consumer's per-message objects."""

from __future__ import annotations

import gc
import weakref
from itertools import cycle
from typing import Any

from aiokafka.structs import ConsumerRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfn.connectors.kafka.columns import Fetched, KafkaAttributes, to_batch
from streamfn.connectors.kafka.source import PartitionFeed
from streamfn.records import Batch, Record

NAMES = {0: "CREATE_TIME", 1: "LOG_APPEND_TIME"}


def expected_record(shard_id: str, m: Any) -> Record:
    """What the source made of one message before it was columnar (the record a handler sees)."""
    return Record(
        shard_id, m.offset, "" if m.key is None else m.key.decode("utf-8", "replace"),
        b"" if m.value is None else m.value, m.timestamp / 1000.0 if m.timestamp > 0 else 0.0, 0,
        KafkaAttributes(m.topic, m.partition, m.key, m.headers, NAMES.get(m.timestamp_type, "NO_TIMESTAMP_TYPE")),
    )


def message(offset: int, value: bytes | None = b"{}", key: bytes | None = b"k", timestamp: int = 1_700_000_000_123,
            timestamp_type: int = 0, headers: tuple[tuple[str, bytes], ...] = ()) -> Any:
    return ConsumerRecord("clicks", 3, offset, timestamp, timestamp_type, key, value, None,
                          -1 if key is None else len(key), -1 if value is None else len(value), headers)


fields = st.tuples(
    st.integers(1, 3),  # gap to the previous offset (compaction, transaction markers)
    st.one_of(st.none(), st.binary(max_size=8)),
    st.one_of(st.none(), st.binary(max_size=6)),
    st.sampled_from([-1, 0, 1, 1_700_000_000_123]),
    st.sampled_from([0, 1, -1]),
    st.lists(st.tuples(st.text(max_size=3), st.binary(max_size=3)), max_size=2).map(tuple),
)


def build(rows: list[tuple[Any, ...]], first: int = 0) -> list[Any]:
    found, offset = [], first
    for gap, value, key, timestamp, kind, headers in rows:
        offset += gap
        found.append(message(offset, value, key, timestamp, kind, headers))
    return found


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(fields, min_size=1, max_size=12), min_size=1, max_size=6),
       st.lists(st.integers(1, 15), min_size=1, max_size=30))
def test_reads_cut_anywhere_give_the_records_built_per_message(fetches: list[list[Any]], limits: list[int]) -> None:
    feed = PartitionFeed("clicks", 3, capacity=10_000)
    feed.reset(0)
    sent, offset = [], 0
    for rows in fetches:
        messages = build(rows, offset)
        offset = messages[-1].offset
        sent.extend(messages)
        feed.put(messages)
    expected = [expected_record("clicks-3", m) for m in sent]
    got: list[Batch] = []
    for limit in cycle(limits):
        if not feed.size:
            break
        batch = feed.take(limit)
        assert 0 < len(batch) <= limit
        got.append(batch)
    assert feed.size == 0 and not feed.arrived.is_set()
    # Each batch, read element by element without building its records, then whole, then joined.
    start = 0
    for batch in got:
        part = expected[start : start + len(batch)]
        start += len(batch)
        assert [batch[i] for i in range(len(batch))] == part
        assert batch.data == [r.data for r in part]
        assert [batch.position_at(i) for i in range(len(batch))] == [r.position for r in part]
        assert batch.arrival_at(-1) == part[-1].arrival_time
        assert batch[1:] == part[1:]
        assert list(batch) == part
    assert start == len(expected)
    assert Batch.join("clicks-3", got) == expected


def test_dense_offsets_stay_a_range_and_gaps_a_list() -> None:
    assert Fetched.of([message(5), message(6), message(7)], "clicks", 3).offsets == range(5, 8)
    gapped = Fetched.of([message(5), message(7)], "clicks", 3)
    assert list(gapped.offsets) == [5, 7]
    assert Fetched.join([gapped.part(0, 1), gapped.part(1, 2)]).offsets == [5, 7]
    dense = Fetched.of([message(n) for n in range(10)], "clicks", 3)
    assert Fetched.join([dense.part(0, 4), dense.part(4, 10)]).offsets == range(10)


def test_a_batch_read_one_record_at_a_time_builds_nothing_else() -> None:
    """The engine looks at a batch's first record; that must not build every key and attribute."""
    batch = to_batch("clicks-3", [message(n, key=b"k%d" % n) for n in range(1000)])
    first = batch[0]
    assert first == expected_record("clicks-3", message(0, key=b"k0"))
    assert batch.first.attributes is not None and batch.first.attributes["key"] == b"k0"
    assert batch[-1].partition_key == "k999" and batch[-1].attributes == {
        "topic": "clicks", "partition": 3, "key": b"k999", "headers": (), "timestamp_type": "CREATE_TIME"}
    columns = batch._columns()  # the lazy key, arrival and attribute columns are still unmade
    assert all(column._values is None for column in (columns[2], columns[3], columns[5]))  # type: ignore[union-attr]


def test_the_feed_keeps_none_of_the_consumers_objects() -> None:
    """A fetched message dies when the fetch is filed: a full feed costs the collector nothing."""
    feed = PartitionFeed("clicks", 3, capacity=10_000)
    feed.reset(0)
    messages = [message(n, headers=(("h", b"v"),)) for n in range(100)]
    witness = weakref.ref(messages[50])
    feed.put(messages)
    del messages
    gc.collect()
    assert witness() is None
    assert feed.take(100)[50].attributes == {"topic": "clicks", "partition": 3, "key": b"k",
                                              "headers": (("h", b"v"),), "timestamp_type": "CREATE_TIME"}


def test_empty_and_none_values_keep_their_place() -> None:
    batch = to_batch("clicks-3", [message(0, value=b""), message(1, value=None, key=None), message(2, value=b"x")])
    assert batch.data == [b"", b"", b"x"]
    assert [r.partition_key for r in batch] == ["k", "", "k"]
    assert batch[1].attributes is not None and batch[1].attributes["key"] is None
