"""Starting many local shards at once: one look at every shard's bounds, checkpoints read once at open."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamfn.connectors.local.log import LocalLog, Retention, shard_id_of
from streamfn.connectors.local.source import LocalShardReader, LocalSource
from streamfn.connectors.local.store import LocalCheckpointStore
from streamfn.errors import StateMismatchError
from streamfn.protocols.checkpoint import Checkpoint
from streamfn.protocols.source import ShardInfo, StartingPosition
from streamfn.records import Position

SHARDS = 4
#: One step: ("append", key count, arrival) or ("trim", age cutoff as an arrival).
_steps = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(1, 30), st.integers(0, 50)),
    st.tuples(st.just("trim"), st.integers(0, 60), st.just(0)),
), max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_steps)
def test_shard_bounds_are_each_shards_tip_and_oldest_retained_sequence(tmp_path_factory: pytest.TempPathFactory,
                                                                       steps: list[tuple[str, int, int]]) -> None:
    log = LocalLog(tmp_path_factory.mktemp("log") / "log.sqlite3")
    try:
        log.create_stream("s", SHARDS)
        arrival = 1000.0
        for kind, count, at in steps:
            if kind == "append":
                arrival += at
                log.append("s", [(f"k{i}", b"x") for i in range(count)], arrival_time=arrival)
            else:
                log.trim("s", Retention(max_age=float(count)), now=arrival)
        expected = [(log.last_seq("s", shard_id_of(i)), log.first_retained_seq("s", shard_id_of(i)))
                    for i in range(SHARDS)]
        assert log.shard_bounds("s") == expected
    finally:
        log.close()


def test_readers_started_together_start_where_each_shard_does(tmp_path: Path) -> None:
    async def scenario() -> None:
        source = LocalSource(tmp_path / "log.sqlite3", "s", SHARDS, retention=Retention(max_age=None))
        await source.open()
        try:
            source.log.append("s", [(f"k{i}", f"{i}".encode()) for i in range(40)])
            tips = source.tips()
            readers = [source.reader(ShardInfo(shard_id_of(i)), None, StartingPosition()) for i in range(SHARDS)]
            assert [r.after_seq for r in readers] == [0] * SHARDS
            # Appended after the readers' look at the bounds: a checkpoint past the seen tip is still this log's.
            source.log.append("s", [(f"k{i}", b"late") for i in range(40)])
            shard = shard_id_of(0)
            resumed = source.reader(ShardInfo(shard), Position(tips[shard] + 1), StartingPosition())
            assert resumed.after_seq == tips[shard] + 1
            assert (await resumed.read(100, 0)).records[0].data == b"late"
            with pytest.raises(StateMismatchError):  # past the real tip: another log's checkpoint
                source.reader(ShardInfo(shard), Position(10_000), StartingPosition())
        finally:
            await source.close()

    asyncio.run(scenario())


def test_a_trim_through_the_source_is_seen_by_the_next_reader_at_the_trim_horizon(tmp_path: Path) -> None:
    async def scenario() -> None:
        source = LocalSource(tmp_path / "log.sqlite3", "s", 1, retention=Retention(max_age=None))
        await source.open()
        try:
            source.log.append("s", [("k", b"old")] * 3, arrival_time=100.0)
            source.log.append("s", [("k", b"new")] * 2, arrival_time=200.0)
            assert source.reader(ShardInfo("shard-0000"), None, StartingPosition()).after_seq == 0
            source.log.trim("s", Retention(max_age=50.0), now=200.0)
            fresh = await source.reader(ShardInfo("shard-0000"), None, StartingPosition()).read(10, 0)
            assert fresh.trimmed == 0 and [r.data for r in fresh.records] == [b"new", b"new"]
        finally:
            await source.close()

    asyncio.run(scenario())


def test_a_reader_told_an_older_tip_looks_the_tip_up_before_refusing(tmp_path: Path) -> None:
    log = LocalLog(tmp_path / "log.sqlite3")
    try:
        log.create_stream("s", 1)
        log.append("s", [("k", b"x")] * 5)
        assert LocalShardReader(log, "s", "shard-0000", 5, known_tip=2).after_seq == 5
        with pytest.raises(StateMismatchError):
            LocalShardReader(log, "s", "shard-0000", 6, known_tip=2)
    finally:
        log.close()


def test_checkpoints_are_read_once_at_open_and_the_stores_own_edits_are_seen(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.sqlite3"

    async def save_all(count: int, offset: int) -> None:
        writer = LocalCheckpointStore(path, "p", interval=0)
        await writer.open()
        for i in range(count):
            await writer.save(shard_id_of(i), Checkpoint(position=Position(i + offset)))
        await writer.close()

    async def scenario() -> None:
        await save_all(300, 1)
        store = LocalCheckpointStore(path, "p", interval=0)
        await store.open()
        try:
            await save_all(1, 1000)  # another writer, after open (a daemon is the only one while it runs)
            loaded = [await store.load(shard_id_of(i)) for i in range(301)]
            assert [c.position.sequence if c and c.position else None for c in loaded] == [*range(1, 301), None]
            await store.overwrite({shard_id_of(1): None, shard_id_of(300): Checkpoint(position=Position(7))})
            await store.reset([shard_id_of(2)])
            assert await store.load(shard_id_of(1)) is None and await store.load(shard_id_of(2)) is None
            assert await store.load(shard_id_of(300)) == Checkpoint(position=Position(7))
        finally:
            await store.close()
        reopened = LocalCheckpointStore(path, "p", interval=0)
        await reopened.open()
        try:
            assert await reopened.load(shard_id_of(300)) == Checkpoint(position=Position(7))
            assert await reopened.load(shard_id_of(1)) is None
        finally:
            await reopened.close()

    asyncio.run(scenario())
