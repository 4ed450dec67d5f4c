"""The local log's tip watcher: idle readers wait on it and wake when a record arrives, from
this LocalLog, another connection, or another process; without inotify it polls."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from streamfn.connectors.local import tips as local_tips
from streamfn.connectors.local.log import LocalLog, shard_for_key, shard_id_of
from streamfn.connectors.local.source import LocalShardReader, LocalSource
from streamfn.protocols.source import ShardInfo, StartingPosition

#: Longer than any test may take: a reader that returns records before it was woken.
LONG = 60.0


@pytest.fixture
async def source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LocalSource]:
    # No safety net: only a wake (listener, inotify) can end a reader's wait within the test.
    monkeypatch.setattr(local_tips, "SAFETY_INTERVAL", LONG)
    src = LocalSource(tmp_path, "s", 4, retention=None)
    await src.open()
    yield src
    await src.close()


def shard_of(key: str) -> ShardInfo:
    return ShardInfo(shard_id_of(shard_for_key(key, 4)))


async def test_an_append_through_the_same_log_wakes_the_waiting_reader(source: LocalSource) -> None:
    reader = source.reader(shard_of("k"), None, StartingPosition())
    waiting = asyncio.create_task(reader.read(10, LONG))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # nothing there: it waits, without polling its tip
    source.log.append("s", [("k", b"1")])
    result = await asyncio.wait_for(waiting, LONG / 2)
    assert [r.data for r in result.records] == [b"1"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux only")
async def test_an_append_from_another_process_wakes_the_reader_through_inotify(source: LocalSource) -> None:
    reader = source.reader(shard_of("k"), None, StartingPosition())
    waiting = asyncio.create_task(reader.read(10, LONG))
    await asyncio.sleep(0.05)
    code = ("import sys; from streamfn.connectors.local.log import LocalLog;"
            "LocalLog(sys.argv[1]).append('s', [('k', b'from-child')])")
    await asyncio.to_thread(subprocess.run, [sys.executable, "-c", code, str(source.path)], check=True)
    result = await asyncio.wait_for(waiting, LONG / 2)
    assert [r.data for r in result.records] == [b"from-child"]


async def test_without_inotify_the_watcher_polls_and_still_wakes_readers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_tips, "INotify", None)
    src = LocalSource(tmp_path, "s", 4, retention=None)
    await src.open()
    other = LocalLog(src.path)  # another connection: no listener tells the watcher
    try:
        reader = src.reader(shard_of("k"), None, StartingPosition())
        waiting = asyncio.create_task(reader.read(10, LONG))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(other.append, "s", [("k", b"polled")])
        result = await asyncio.wait_for(waiting, LONG / 2)
        assert [r.data for r in result.records] == [b"polled"]
    finally:
        other.close()
        await src.close()


async def test_a_wait_that_nothing_ends_comes_back_empty_after_its_time(source: LocalSource) -> None:
    reader = source.reader(shard_of("k"), None, StartingPosition())
    result = await reader.read(10, 0.05)
    assert result.records == [] and result.behind_ms == 0.0


async def test_a_reader_without_a_watcher_looks_up_its_tip_itself(source: LocalSource) -> None:
    other = LocalLog(source.path)
    try:
        reader = LocalShardReader(source.log, "s", shard_of("k").shard_id, 0, tips=None)
        waiting = asyncio.create_task(reader.read(10, LONG))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(other.append, "s", [("k", b"self-served")])
        result = await asyncio.wait_for(waiting, LONG / 2)
        assert [r.data for r in result.records] == [b"self-served"]
    finally:
        other.close()


async def test_small_reads_are_served_in_order_from_one_read_of_the_block(source: LocalSource) -> None:
    source.log.append("s", [("k", b"%d" % i) for i in range(600)])  # one block
    reader = source.reader(shard_of("k"), None, StartingPosition())
    statements: list[str] = []
    source.log._conn().set_trace_callback(statements.append)
    got = []
    try:
        for size in [1, 3, 1, 300, 7] * 40:
            records = (await reader.read(size, 0)).records
            assert len(records) == min(size, 600 - len(got))  # never more than asked: no read-ahead here
            got.extend(r.sequence for r in records)
            if len(got) == 600:
                break
    finally:
        source.log._conn().set_trace_callback(None)
    assert got == list(range(1, 601))
    assert len([sql for sql in statements if "FROM blocks" in sql]) == 1  # the log's read cache serves the rest
    assert (await reader.read(5, 0)).records == []  # nothing left over


async def test_readers_woken_by_one_commit_read_their_new_blocks_without_a_query_each(
    source: LocalSource,
) -> None:
    """The watcher reads the blocks of every shard one commit woke in one query, before waking them:
    each waiting reader then finds its next records in the read cache and makes no query of its own."""
    keys = {shard_for_key(f"k{n}", 4): f"k{n}" for n in range(50)}
    assert sorted(keys) == [0, 1, 2, 3]
    source.log.append("s", [(key, b"old") for key in keys.values()])
    readers = [source.reader(ShardInfo(shard_id_of(shard)), None, StartingPosition()) for shard in range(4)]
    for reader in readers:
        assert [r.data for r in (await reader.read(10, 0)).records] == [b"old"]
    waiting = [asyncio.create_task(reader.read(10, LONG)) for reader in readers]
    await asyncio.sleep(0.05)
    statements: list[str] = []
    source.log._conn().set_trace_callback(statements.append)  # the loop thread's connection: every read here
    try:
        source.log.append("s", [(key, b"new-%d" % shard) for shard, key in keys.items()])
        results = await asyncio.wait_for(asyncio.gather(*waiting), LONG / 2)
    finally:
        source.log._conn().set_trace_callback(None)
    assert [[r.data for r in result.records] for result in results] == [[b"new-%d" % s] for s in range(4)]
    assert [r.sequence for result in results for r in result.records] == [2, 2, 2, 2]
    reads = [sql for sql in statements if sql.startswith("SELECT") and "FROM blocks" in sql]
    assert len(reads) == 1 and "rowid >" in reads[0], statements  # the watcher's one query, no reader's
