"""The local log: block layout, ordering, slicing, starting positions, routing, and the source."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamfn.connectors.local.log import (
    BLOCK_RECORDS,
    LocalLog,
    Retention,
    TrimmedRange,
    shard_for_key,
    shard_id_of,
)
from streamfn.connectors.local.produce import ndjson_records, synthetic_clicks
from streamfn.connectors.local.source import LocalSource, LocalSourceConfig
from streamfn.errors import SourceError
from streamfn.protocols.source import ShardInfo, ShardReader, Source, StartingPosition
from streamfn.records import Batch, Position


@pytest.fixture
def log(tmp_path: Path) -> Iterator[LocalLog]:
    log = LocalLog(tmp_path / "log.sqlite3")
    yield log
    log.close()


def test_one_shard_reads_back_in_order_with_sequences_from_one(log: LocalLog) -> None:
    log.create_stream("s", 1)
    assert log.append("s", [(f"k{i}", f"v{i}".encode()) for i in range(5)]) == 5
    assert log.append("s", [("k5", b"v5")]) == 1
    records = log.read("s", "shard-0000", 0, 100)
    assert [r.sequence for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r.data for r in records] == [f"v{i}".encode() for i in range(6)]
    assert [r.partition_key for r in records] == [f"k{i}" for i in range(6)]
    assert all(r.shard_id == "shard-0000" for r in records)
    assert records[0].arrival_time <= records[-1].arrival_time <= time.time()
    assert log.last_seq("s", "shard-0000") == 6


def test_reads_slice_inside_blocks_and_across_them(log: LocalLog) -> None:
    log.create_stream("s", 1)
    log.append("s", [("k", str(i).encode()) for i in range(2 * BLOCK_RECORDS + 10)])
    records = log.read("s", "shard-0000", BLOCK_RECORDS - 3, 7)
    assert [r.sequence for r in records] == list(range(BLOCK_RECORDS - 2, BLOCK_RECORDS + 5))
    assert [r.data for r in records] == [str(r.sequence - 1).encode() for r in records]
    everything = log.read("s", "shard-0000", 5, 10_000)
    assert [r.sequence for r in everything] == list(range(6, 2 * BLOCK_RECORDS + 11))


def test_small_reads_walk_big_blocks_in_order(log: LocalLog) -> None:
    log.create_stream("s", 1)
    log.append("s", [("k", str(i).encode()) for i in range(2 * BLOCK_RECORDS + 1)])
    seen: list[int] = []
    after = 0
    while batch := log.read("s", "shard-0000", after, 99):
        assert len(batch) <= 99
        seen.extend(int(r.data) for r in batch)
        after = batch[-1].sequence
    assert seen == list(range(2 * BLOCK_RECORDS + 1))
    assert [r.sequence for r in log.read("s", "shard-0000", 150, 3)] == [151, 152, 153]


def test_blocks_hold_at_most_the_block_size(log: LocalLog) -> None:
    log.create_stream("s", 1)
    log.append("s", [("k", b"x")] * (BLOCK_RECORDS * 2 + 1))
    conn = log._conn()
    sizes = [last - first + 1 for first, last in conn.execute("SELECT first_seq, last_seq FROM blocks")]
    assert sizes == [BLOCK_RECORDS, BLOCK_RECORDS, 1]


def test_empty_reads(log: LocalLog) -> None:
    log.create_stream("s", 2)
    assert log.read("s", "shard-0001", 0, 10) == []
    assert log.last_seq("s", "shard-0001") == 0
    log.append("s", [("a", b"1")])
    shard = shard_id_of(shard_for_key("a", 2))
    assert log.read("s", shard, 1, 10) == []
    assert log.read("s", shard, 0, 0) == []
    assert log.append("s", []) == 0


def test_create_stream_is_idempotent_and_rejects_another_shard_count(log: LocalLog) -> None:
    log.create_stream("s", 3)
    log.create_stream("s", 3)
    assert log.streams() == {"s": 3}
    assert log.shard_ids("s") == ["shard-0000", "shard-0001", "shard-0002"]
    with pytest.raises(SourceError, match="3 shards, not 4"):
        log.create_stream("s", 4)
    with pytest.raises(SourceError, match="no stream"):
        log.append("missing", [("k", b"v")])


def test_routing_is_a_stable_hash_of_the_key(log: LocalLog) -> None:
    # Pinned values: MD5-range routing must not change between runs or versions.
    assert [shard_for_key(k, 4) for k in ("a", "b", "c", "user-1")] == [0, 2, 1, 3]
    log.create_stream("s", 4)
    log.append("s", [(f"user-{i % 50}", b"x") for i in range(1000)])
    for shard in log.shard_ids("s"):
        for record in log.read("s", shard, 0, 10_000):
            assert shard_id_of(shard_for_key(record.partition_key, 4)) == shard
    assert sum(log.last_seq("s", shard) for shard in log.shard_ids("s")) == 1000


def test_first_seq_at_or_after_a_timestamp(log: LocalLog) -> None:
    log.create_stream("s", 1)
    log.append("s", [("k", b"old")] * 3)
    time.sleep(0.01)
    middle = time.time()
    time.sleep(0.01)
    log.append("s", [("k", b"new")] * 2)
    assert log.first_seq_at_or_after("s", "shard-0000", 0) == 1
    assert log.first_seq_at_or_after("s", "shard-0000", middle) == 4
    assert log.first_seq_at_or_after("s", "shard-0000", time.time() + 10) is None


def test_trim_drops_old_blocks_and_sequences_continue(log: LocalLog) -> None:
    log.create_stream("s", 1)
    now = time.time()
    log.append("s", [("k", b"old")] * 3, arrival_time=now - 100)
    log.append("s", [("k", b"new")] * 2, arrival_time=now)
    assert log.trim("s", Retention(max_age=50), now=now) == [TrimmedRange("shard-0000", 1, 3)]
    assert [r.sequence for r in log.read("s", "shard-0000", 0, 10)] == [4, 5]
    assert log.first_retained_seq("s", "shard-0000") == 4
    assert log.trim("s", Retention(max_age=50), now=now + 51) == [TrimmedRange("shard-0000", 4, 5)]
    assert log.first_retained_seq("s", "shard-0000") == 6
    log.append("s", [("k", b"later")])
    assert [r.sequence for r in log.read("s", "shard-0000", 0, 10)] == [6]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    appends=st.lists(
        st.lists(st.tuples(st.text(max_size=6), st.binary(max_size=20)), max_size=60), min_size=1, max_size=6
    ),
    data=st.data(),
)
def test_reading_after_any_sequence_returns_exactly_the_later_records(
    tmp_path_factory: pytest.TempPathFactory, appends: list[list[tuple[str, bytes]]], data: st.DataObject
) -> None:
    log = LocalLog(tmp_path_factory.mktemp("prop") / "log.sqlite3")
    try:
        log.create_stream("s", 3)
        expected: dict[str, list[tuple[str, bytes]]] = {s: [] for s in log.shard_ids("s")}
        for chunk in appends:
            log.append("s", chunk)
            for key, value in chunk:
                expected[shard_id_of(shard_for_key(key, 3))].append((key, value))
        for shard, records in expected.items():
            after = data.draw(st.integers(0, len(records) + 2), label=f"after {shard}")
            limit = data.draw(st.integers(1, 200), label=f"limit {shard}")
            got = log.read("s", shard, after, limit)
            want = records[after : after + limit]
            assert [(r.partition_key, r.data) for r in got] == want
            assert [r.sequence for r in got] == list(range(after + 1, after + 1 + len(want)))
            # Continuing where that read stopped (possibly inside a cached block).
            after = max(after, got[-1].sequence if got else after)
            got = log.read("s", shard, after, limit)
            assert [(r.partition_key, r.data) for r in got] == records[after : after + limit]
    finally:
        log.close()


# -- the async source ----------------------------------------------------------------------------


async def test_source_protocol_shards_and_starting_positions(tmp_path: Path) -> None:
    source = LocalSource(tmp_path, "clicks", 2)
    assert isinstance(source, Source)
    await source.open()
    try:
        shards = await source.list_shards()
        assert shards == [ShardInfo("shard-0000"), ShardInfo("shard-0001")]
        shard = ShardInfo(shard_id_of(shard_for_key("k", 2)))
        source.log.append("clicks", [("k", b"1"), ("k", b"2")])
        await asyncio.sleep(0.01)
        stamp = time.time()
        await asyncio.sleep(0.01)
        source.log.append("clicks", [("k", b"3")])

        horizon = source.reader(shard, None, StartingPosition())
        assert isinstance(horizon, ShardReader)
        assert [r.data for r in (await horizon.read(10, 0)).records] == [b"1", b"2", b"3"]

        latest = source.reader(shard, None, StartingPosition("latest"))
        at_ts = source.reader(shard, None, StartingPosition("at_timestamp", stamp))
        resumed = source.reader(shard, Position(1), StartingPosition("latest"))
        assert (await latest.read(10, 0)).records == []
        assert [r.data for r in (await at_ts.read(10, 0)).records] == [b"3"]
        assert [r.data for r in (await resumed.read(10, 0)).records] == [b"2", b"3"]

        source.log.append("clicks", [("k", b"4")])
        result = await latest.read(10, 0)
        assert [r.data for r in result.records] == [b"4"]
        assert result.shard_end is False
        assert result.behind_ms is not None and result.behind_ms >= 0
    finally:
        await source.close()


async def test_read_waits_for_an_append_and_gives_up_after_wait(tmp_path: Path) -> None:
    source = LocalSource(tmp_path / "log.sqlite3", "s", 1)
    await source.open()
    try:
        reader = source.reader(ShardInfo("shard-0000"), None, StartingPosition())
        empty = await reader.read(10, 0.05)
        assert empty.records == []

        async def append_soon() -> None:
            await asyncio.sleep(0.05)
            source.log.append("s", [("k", b"late")])

        task = asyncio.create_task(append_soon())
        result = await reader.read(10, 5.0)
        await task
        assert [r.data for r in result.records] == [b"late"]
    finally:
        await source.close()


async def test_big_reads_through_a_thread_match_small_direct_reads(tmp_path: Path) -> None:
    source = LocalSource(tmp_path, "s", 1)
    await source.open()
    try:
        source.log.append("s", [("k", str(i).encode()) for i in range(3000)])
        reader = source.reader(ShardInfo("shard-0000"), None, StartingPosition())
        big = await reader.read(2500, 0)
        small = await reader.read(10, 0)
        assert [r.sequence for r in big.records] == list(range(1, 2501))
        assert [r.sequence for r in small.records] == list(range(2501, 2511))
    finally:
        await source.close()


async def test_lambda_event_has_the_kinesis_shape(tmp_path: Path) -> None:
    source = LocalSource(tmp_path, "clicks", 1)
    await source.open()
    try:
        source.log.append("clicks", [("user-1", b'{"a":1}')])
        record = source.log.read("clicks", "shard-0000", 0, 1)[0]
        event = source.lambda_event(Batch("shard-0000", [record]))
        assert event == {
            "Records": [
                {
                    "kinesis": {
                        "kinesisSchemaVersion": "1.0",
                        "partitionKey": "user-1",
                        "sequenceNumber": "1",
                        "data": base64.b64encode(b'{"a":1}').decode(),
                        "approximateArrivalTimestamp": record.arrival_time,
                    },
                    "eventSource": "aws:kinesis",
                    "eventVersion": "1.0",
                    "eventID": "shard-0000:1",
                    "eventName": "aws:kinesis:record",
                    "invokeIdentityArn": "arn:aws:iam::000000000000:role/streamfn",
                    "awsRegion": "local",
                    "eventSourceARN": "arn:aws:kinesis:local:000000000000:stream/clicks",
                }
            ]
        }
    finally:
        await source.close()


def test_config_defaults_validation_and_build(tmp_path: Path) -> None:
    from streamfn.components import BuildContext

    config = msgspec.json.decode(b'{"type": "local", "stream": "clicks"}', type=LocalSourceConfig)
    assert config.shards == 4 and config.path is None
    ctx = BuildContext(pipeline="p", config_dir=tmp_path / "conf", state_dir=tmp_path / "state")
    assert config.build(ctx).path == tmp_path / "state" / "log.sqlite3"
    custom = LocalSourceConfig(stream="s", path="data/x.db")
    assert custom.build(ctx).path == tmp_path / "conf" / "data" / "x.db"
    with pytest.raises(msgspec.ValidationError, match="shards"):
        msgspec.json.decode(b'{"type": "local", "stream": "s", "shards": 0}', type=LocalSourceConfig)
    with pytest.raises(msgspec.ValidationError, match="bogus"):
        msgspec.json.decode(b'{"type": "local", "stream": "s", "bogus": 1}', type=LocalSourceConfig)


# -- produce helpers -----------------------------------------------------------------------------


def test_synthetic_clicks_are_reproducible_json_keyed_by_user() -> None:
    first = list(synthetic_clicks(200, seed=7))
    assert first == list(synthetic_clicks(200, seed=7))
    assert first != list(synthetic_clicks(200, seed=8))
    sizes = [len(data) for _, data in first]
    assert 180 <= sum(sizes) / len(sizes) <= 320
    for key, data in first:
        event = msgspec.json.decode(data)
        assert event["user_id"] == key
        assert {"page", "referrer", "ts", "session"} <= event.keys()


def test_ndjson_records_keys_blank_lines_and_errors() -> None:
    text = b'{"id": "a", "n": 1}\n\n{"id": 7}\n'
    assert list(ndjson_records(io.BytesIO(text), "id")) == [("a", b'{"id": "a", "n": 1}'), ("7", b'{"id": 7}')]
    assert [k for k, _ in ndjson_records(io.BytesIO(text), None)] == ["0", "1"]
    with pytest.raises(ValueError, match="line 2"):
        list(ndjson_records(io.BytesIO(b'{"id": 1}\n{oops\n'), "id"))
    with pytest.raises(ValueError, match="line 1: no field 'id'"):
        list(ndjson_records(io.BytesIO(b'{"x": 1}\n'), "id"))


def test_a_block_read_past_is_not_kept_alive(log: LocalLog) -> None:
    """A shard read to its end (or idle) holds no decoded block: 1,024 idle shards would hold 1,024 of them."""
    log.create_stream("s", 1)
    log.append("s", [(f"k{i}", b"x" * 200) for i in range(2500)])  # blocks of 1000, 1000, 500
    after, seen = 0, 0
    while records := log.read("s", "shard-0000", after, 700):  # reads stop inside blocks
        after, seen = records[-1].sequence, seen + len(records)
    assert seen == 2500
    assert log._partial == {}


def test_a_read_served_from_cached_blocks_up_to_the_tip_makes_no_query(log: LocalLog) -> None:
    log.create_stream("s", 1)
    log.append("s", [("k", b"1"), ("k", b"2")])
    mark = log.newest_block()
    log.append("s", [("k", b"3")])
    log.append("s", [("k", b"4"), ("k", b"5")])
    # Blocks that do not hold the next record are not cached; the one that does is.
    mark = log.cache_next_blocks("s", mark, {0: 4}, limit=10)
    assert mark == log.newest_block()
    statements: list[str] = []
    log._conn().set_trace_callback(statements.append)
    batch = log.read("s", "shard-0000", 3, 100, tip=5)
    assert [(r.sequence, r.data) for r in batch] == [(4, b"4"), (5, b"5")] and statements == []
    batch = log.read("s", "shard-0000", 2, 100, tip=5)  # the cached block was read past: a query again
    assert [r.data for r in batch] == [b"3", b"4", b"5"] and statements
    log._conn().set_trace_callback(None)


def test_caching_new_blocks_gives_up_past_its_limit_and_after_rowids_restart(log: LocalLog) -> None:
    log.create_stream("s", 1)
    mark = log.newest_block()
    for n in range(3):
        log.append("s", [("k", b"%d" % n)])
    # More new blocks than the limit: none cached (the shard reads its own), the mark jumps to the newest.
    assert log.cache_next_blocks("s", mark, {0: 1}, limit=2) == log.newest_block()
    assert log._partial == {}
    # A mark past every block (the table's end was trimmed away, rowids restart lower): it comes back down.
    assert log.cache_next_blocks("s", 10_000, {0: 4}, limit=2) == log.newest_block()
    assert log.read("s", "shard-0000", 0, 10, tip=3).json() == [0, 1, 2]


def wal_frames(path: Path) -> int:
    """Frames in a SQLite file's WAL since it last started over (what a checkpoint would copy)."""
    import sqlite3

    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])
    finally:
        db.close()


def test_appends_checkpoint_the_wal_themselves_never_inside_a_commit(log: LocalLog,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint (two fsyncs) inside an append's commit delayed its records by 10-40 ms. SQLite
    now runs one on commit only far past its default (a safety net); an append runs it after its
    commit, wake-ups and merges once it wrote enough, so the WAL stays short all the same."""
    from streamfn.connectors.local import log as log_module
    from streamfn.connectors.local import wal

    log.create_stream("s", 4)
    assert log._conn().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == wal.SAFETY_FRAMES
    monkeypatch.setattr(wal, "CHECKPOINT_FRAMES", 40)
    steps: list[str] = []
    monkeypatch.setattr(log_module, "checkpoint", lambda conn, path, real=wal.checkpoint: (
        steps.append("checkpoint"), real(conn, path)))
    log.add_listener(lambda stream, tips: steps.append("told"))
    for n in range(200):
        steps.append("append")
        log.append("s", [(f"k{n}-{i}", b'{"v": 1}') for i in range(8)])
    frames = wal_frames(log.path)
    assert frames < 100, f"{frames} frames: the WAL was never checkpointed"
    appends = " ".join(steps).split("append")[1:]
    assert {a.strip() for a in appends} == {"told", "told checkpoint"}  # some checkpoints, each after the wake-ups
