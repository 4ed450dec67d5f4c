"""A local log's identity and the checkpoints bound to it: another log's checkpoints are refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from streamfn.connectors.local.log import LAYOUT_VERSION, LocalLog
from streamfn.connectors.local.source import LocalSource
from streamfn.connectors.local.store import LocalCheckpointStore, bind_local_log
from streamfn.errors import StateMismatchError
from streamfn.protocols.checkpoint import Checkpoint
from streamfn.protocols.source import ShardInfo, StartingPosition
from streamfn.records import Position


def recreate(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def test_a_log_keeps_its_id_and_a_new_file_gets_another(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    first = LocalLog(path)
    first_id = first.log_id
    first.close()
    again = LocalLog(path)
    assert again.log_id == first_id and len(first_id) == 32
    again.close()
    recreate(path)
    fresh = LocalLog(path)
    assert fresh.log_id != first_id
    assert fresh._conn().execute("PRAGMA user_version").fetchone() == (LAYOUT_VERSION,)
    fresh.close()


def test_a_log_from_before_identities_gets_one_and_keeps_its_records(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    log = LocalLog(path)
    log.create_stream("s", 1)
    log.append("s", [("k", b"v")] * 3)
    log.close()
    with sqlite3.connect(path) as db:  # what the previous release wrote: no meta table, user_version 0
        db.execute("DROP TABLE meta")
        db.execute("PRAGMA user_version=0")
    upgraded = LocalLog(path)
    try:
        assert len(upgraded.log_id) == 32
        assert [r.sequence for r in upgraded.read("s", "shard-0000", 0, 10)] == [1, 2, 3]
    finally:
        upgraded.close()
    reopened = LocalLog(path)
    assert reopened.log_id == upgraded.log_id
    reopened.close()


async def open_pair(tmp_path: Path) -> tuple[LocalSource, LocalCheckpointStore]:
    source = LocalSource(tmp_path / "log.sqlite3", "s", 2)
    store = LocalCheckpointStore(tmp_path / "checkpoints.sqlite3", "p")
    await source.open()
    await store.open()
    return source, store


async def close_pair(source: LocalSource, store: LocalCheckpointStore) -> None:
    await store.close()
    await source.close()


async def test_checkpoints_of_a_recreated_log_are_refused_with_the_command_to_fix_it(tmp_path: Path) -> None:
    source, store = await open_pair(tmp_path)
    await bind_local_log(source, store)
    source.log.append("s", [(f"k{i}", b"v") for i in range(100)])
    await store.save("shard-0000", Checkpoint(position=Position(source.log.last_seq("s", "shard-0000"))))
    await bind_local_log(source, store)  # the same log: fine, any number of times
    await close_pair(source, store)

    recreate(tmp_path / "log.sqlite3")
    source, store = await open_pair(tmp_path)
    try:
        source.log.append("s", [(f"k{i}", b"v") for i in range(1000)])  # past the old checkpoint, too
        with pytest.raises(StateMismatchError) as refused:
            await bind_local_log(source, store)
        message = str(refused.value)
        assert "recreated or replaced" in message and "streamfn checkpoints reset CONFIG" in message
        assert source.log_id in message

        assert await store.reset() == ["shard-0000"]
        await bind_local_log(source, store)  # forgotten: the new log is adopted
        assert await store.load("shard-0000") is None
    finally:
        await close_pair(source, store)


async def test_checkpoints_from_before_identities_are_adopted_unless_past_the_tip(tmp_path: Path) -> None:
    source, store = await open_pair(tmp_path)
    try:
        source.log.append("s", [(f"k{i}", b"v") for i in range(50)])
        tip = source.log.last_seq("s", "shard-0001")
        await store.save("shard-0001", Checkpoint(position=Position(tip)))
        await store.flush()
        await bind_local_log(source, store)  # no identity recorded yet: adopted
        db = sqlite3.connect(tmp_path / "checkpoints.sqlite3")
        assert db.execute("SELECT log_id FROM log_identity").fetchall() == [(source.log_id,)]
        db.execute("DELETE FROM log_identity")  # as the previous release left it
        db.commit()
        await store.save("shard-0001", Checkpoint(position=Position(tip + 10)))
        await store.flush()
        with pytest.raises(StateMismatchError, match=f"after sequence {tip + 10}, but the log ends at {tip}"):
            await bind_local_log(source, store)
        db.close()
    finally:
        await close_pair(source, store)


async def test_a_reader_never_resumes_past_the_tip(tmp_path: Path) -> None:
    source, store = await open_pair(tmp_path)
    try:
        source.log.append("s", [("k", b"v")] * 3)
        shard = ShardInfo("shard-0000" if source.log.last_seq("s", "shard-0000") else "shard-0001")
        tip = source.log.last_seq("s", shard.shard_id)
        assert (await source.reader(shard, Position(tip), StartingPosition()).read(10, 0)).records == []
        with pytest.raises(StateMismatchError, match="streamfn checkpoints reset CONFIG"):
            source.reader(shard, Position(tip + 1), StartingPosition())
    finally:
        await close_pair(source, store)
