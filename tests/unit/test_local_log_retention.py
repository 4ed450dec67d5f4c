"""Retention of the embedded log: whole blocks trimmed by age and size, and readers that count what they missed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamfn.config import json_schema
from streamfn.connectors.local.log import BLOCK_RECORDS, MERGE_BLOCKS, LocalLog, Retention, TrimmedRange, shard_for_key
from streamfn.connectors.local.source import LocalSource, LocalSourceConfig
from streamfn.protocols.source import ShardInfo, StartingPosition

DAY = 24 * 3600.0
SHARD = ShardInfo("shard-0000")


@pytest.fixture
def log(tmp_path: Path) -> Iterator[LocalLog]:
    log = LocalLog(tmp_path / "log.sqlite3")
    log.create_stream("s", 1)
    yield log
    log.close()


def block_bounds(log: LocalLog, shard: int = 0) -> list[tuple[int, int]]:
    return log._conn().execute(
        "SELECT first_seq, last_seq FROM blocks WHERE shard = ? ORDER BY last_seq", (shard,)).fetchall()


def test_age_trims_whole_blocks_older_than_the_retention(log: LocalLog) -> None:
    now = time.time()
    log.append("s", [("k", b"x")] * (BLOCK_RECORDS + 500), arrival_time=now - 2 * DAY)  # two blocks
    log.append("s", [("k", b"y")] * 10, arrival_time=now - DAY + 60)
    assert log.trim("s", Retention(), now=now) == [TrimmedRange("shard-0000", 1, BLOCK_RECORDS + 500)]
    assert block_bounds(log) == [(BLOCK_RECORDS + 501, BLOCK_RECORDS + 510)]
    assert log.trim("s", Retention(), now=now) == []  # nothing more is old enough
    assert log.last_seq("s", "shard-0000") == BLOCK_RECORDS + 510  # the tip never moves back


def test_size_per_shard_keeps_the_newest_blocks_that_fit(log: LocalLog) -> None:
    for i in range(5):
        log.append("s", [("k", bytes(100))] * BLOCK_RECORDS, arrival_time=1000.0 + i)
    sizes = [size for (size,) in log._conn().execute("SELECT length(payload) FROM blocks ORDER BY last_seq")]
    limit = sizes[-1] + sizes[-2]  # exactly the two newest blocks
    trimmed = log.trim("s", Retention(max_age=None, max_shard_bytes=limit), now=2000.0)
    assert trimmed == [TrimmedRange("shard-0000", 1, 3 * BLOCK_RECORDS)]
    assert log.first_retained_seq("s", "shard-0000") == 3 * BLOCK_RECORDS + 1
    assert [r.sequence for r in log.read("s", "shard-0000", 0, 1)] == [3 * BLOCK_RECORDS + 1]


def test_size_per_stream_drops_the_oldest_blocks_of_any_shard(tmp_path: Path) -> None:
    log = LocalLog(tmp_path / "log.sqlite3")
    try:
        log.create_stream("s", 2)
        keys = {shard_for_key(key, 2): key for key in ("a", "b", "c", "d")}
        for step, shard in enumerate([0, 1, 0, 1]):
            log.append("s", [(keys[shard], bytes(1000))] * 10, arrival_time=1000.0 + step)
        one_block = log._conn().execute("SELECT max(length(payload)) FROM blocks").fetchone()[0]
        trimmed = log.trim("s", Retention(max_age=None, max_stream_bytes=2 * one_block), now=2000.0)
        # The two oldest blocks (one per shard) go; the two newest stay.
        assert sorted(trimmed) == [TrimmedRange("shard-0000", 1, 10), TrimmedRange("shard-0001", 1, 10)]
        assert block_bounds(log, 0) == [(11, 20)] and block_bounds(log, 1) == [(11, 20)]
    finally:
        log.close()


def test_unlimited_keeps_everything(log: LocalLog) -> None:
    log.append("s", [("k", b"x")] * 10, arrival_time=1.0)
    unlimited = Retention(max_age=None)
    assert unlimited.unlimited
    assert log.trim("s", unlimited) == []
    assert len(log.read("s", "shard-0000", 0, 100)) == 10
    config = msgspec.json.decode(b'{"type": "local", "stream": "s", "retention_hours": "unlimited"}',
                                 type=LocalSourceConfig)
    assert config.retention() == unlimited


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    # Fewer appends than make a merge: one block per append (merged blocks: test_local_log_compaction.py).
    appends=st.lists(st.tuples(st.integers(1, 30), st.integers(0, 300)), min_size=1, max_size=MERGE_BLOCKS - 1),
    shard_limit=st.one_of(st.none(), st.integers(1, 20_000)),
    max_age=st.one_of(st.none(), st.floats(0.5, 10.0)),
)
def test_a_trim_leaves_a_suffix_of_whole_blocks_within_the_limits(
    tmp_path_factory: pytest.TempPathFactory, appends: list[tuple[int, int]], shard_limit: int | None,
    max_age: float | None,
) -> None:
    log = LocalLog(tmp_path_factory.mktemp("trim") / "log.sqlite3")
    try:
        log.create_stream("s", 1)
        for step, (count, size) in enumerate(appends):
            log.append("s", [("k", bytes(size))] * count, arrival_time=float(step))
        before = block_bounds(log)
        now = float(len(appends))
        trimmed = log.trim("s", Retention(max_age=max_age, max_shard_bytes=shard_limit), now=now)
        after = block_bounds(log)
        assert after == before[len(before) - len(after):]  # a suffix: only the oldest blocks go
        dropped = sum(t.records for t in trimmed)
        assert dropped + sum(last - first + 1 for first, last in after) == sum(c for c, _ in appends)
        stored = [(arrival, size) for arrival, size in log._conn().execute(
            "SELECT arrival, length(payload) FROM blocks ORDER BY last_seq")]
        if shard_limit is not None:
            assert sum(size for _, size in stored) <= shard_limit
        if max_age is not None:
            assert all(arrival >= now - max_age for arrival, _ in stored)
        # Nothing is dropped that no limit asked for: the newest dropped block broke one.
        if trimmed:
            newest_dropped = before[len(before) - len(after) - 1]
            arrival, size = log_meta(appends, before, newest_dropped)
            too_old = max_age is not None and arrival < now - max_age
            too_big = shard_limit is not None and size + sum(s for _, s in stored) > shard_limit
            assert too_old or too_big
        assert [r.sequence for r in log.read("s", "shard-0000", 0, 10_000)] == [
            seq for first, last in after for seq in range(first, last + 1)]
    finally:
        log.close()


def log_meta(appends: list[tuple[int, int]], blocks: list[tuple[int, int]], block: tuple[int, int]) -> tuple[
        float, int]:
    """The arrival and an upper bound of the payload size of ``block``, from what was appended."""
    seq = 0
    for step, (count, size) in enumerate(appends):
        if seq < block[0] <= seq + count:
            return float(step), (block[1] - block[0] + 1) * (size + 8) + 16
        seq += count
    raise AssertionError(f"block {block} not appended")


# -- readers -------------------------------------------------------------------------------------


async def test_a_reader_behind_the_trim_point_counts_and_logs_the_skipped_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    source = LocalSource(tmp_path, "s", 1, retention=Retention(max_age=None))
    await source.open()
    try:
        now = time.time()
        source.log.append("s", [("k", b"old")] * (BLOCK_RECORDS + 5), arrival_time=now - 2 * DAY)
        source.log.append("s", [("k", b"new")] * 3, arrival_time=now)
        reader = source.reader(SHARD, None, StartingPosition())  # before the trim: starts at 1
        assert source.log.trim("s", Retention(), now=now) == [TrimmedRange("shard-0000", 1, BLOCK_RECORDS + 5)]
        with caplog.at_level(logging.WARNING, logger="streamfn.source.local"):
            result = await reader.read(100, 0)
        assert [r.sequence for r in result.records] == [BLOCK_RECORDS + 6, BLOCK_RECORDS + 7, BLOCK_RECORDS + 8]
        assert result.trimmed == BLOCK_RECORDS + 5
        warning = next(r for r in caplog.records if "trimmed by retention" in r.getMessage())
        assert (warning.shard, warning.first_sequence, warning.last_sequence, warning.records) == (  # type: ignore[attr-defined]
            "shard-0000", 1, BLOCK_RECORDS + 5, BLOCK_RECORDS + 5)
        assert (await reader.read(100, 0)).trimmed == 0
        # A new reader at the trim horizon starts at the oldest record kept: nothing counts as trimmed.
        fresh = await source.reader(SHARD, None, StartingPosition()).read(100, 0)
        assert fresh.trimmed == 0 and fresh.records[0].sequence == BLOCK_RECORDS + 6
    finally:
        await source.close()


async def test_a_reader_whose_whole_backlog_was_trimmed_reports_it_then_waits(tmp_path: Path) -> None:
    source = LocalSource(tmp_path, "s", 1, retention=Retention(max_age=None))
    await source.open()
    try:
        source.log.append("s", [("k", b"old")] * 7, arrival_time=1.0)
        reader = source.reader(SHARD, None, StartingPosition())
        source.log.trim("s", Retention(), now=time.time())
        result = await reader.read(100, 1.0)
        assert result.records == [] and result.trimmed == 7
        started = time.monotonic()
        empty = await reader.read(100, 0.1)
        assert empty.records == [] and empty.trimmed == 0 and time.monotonic() - started >= 0.1
        source.log.append("s", [("k", b"new")])
        later = await reader.read(100, 0)
        assert [r.sequence for r in later.records] == [8] and later.trimmed == 0
    finally:
        await source.close()


async def test_the_open_source_trims_on_its_own(tmp_path: Path) -> None:
    seed = LocalLog(tmp_path / "log.sqlite3")
    seed.create_stream("s", 1)
    seed.append("s", [("k", b"old")] * 5, arrival_time=time.time() - 2 * DAY)
    seed.close()
    source = LocalSource(tmp_path, "s", 1, retention=Retention(), trim_interval=0.05)
    await source.open()
    try:
        for _ in range(250):  # the first pass runs at open, in a thread
            if source.log.first_retained_seq("s", "shard-0000") == 6:
                break
            await asyncio.sleep(0.02)
        assert source.log.first_retained_seq("s", "shard-0000") == 6
        source.log.append("s", [("k", b"new")])
        assert [r.sequence for r in source.log.read("s", "shard-0000", 0, 10)] == [6]
    finally:
        await source.close()


def test_retention_config_defaults_validation_and_schema() -> None:
    config = msgspec.json.decode(b'{"type": "local", "stream": "s"}', type=LocalSourceConfig)
    assert config.retention() == Retention(max_age=DAY, max_shard_bytes=None, max_stream_bytes=None)
    sized = msgspec.json.decode(
        b'{"type": "local", "stream": "s", "retention_hours": 2.5, "retention_shard_bytes": 1000,'
        b' "retention_stream_bytes": 5000}', type=LocalSourceConfig)
    assert sized.retention() == Retention(max_age=9000.0, max_shard_bytes=1000, max_stream_bytes=5000)
    for bad in (b'"retention_hours": 0', b'"retention_shard_bytes": -1', b'"retention_hours": "forever"'):
        with pytest.raises(msgspec.ValidationError, match="retention"):
            msgspec.json.decode(b'{"type": "local", "stream": "s", ' + bad + b"}", type=LocalSourceConfig)
    schema = json_schema()["$defs"]["LocalSourceConfig"]["properties"]
    assert {"retention_hours", "retention_shard_bytes", "retention_stream_bytes"} <= schema.keys()
    assert schema["retention_hours"]["default"] == 24.0
    assert "24 hours" in schema["retention_hours"]["description"]


async def test_closing_the_source_while_it_trims_leaves_the_log_intact(tmp_path: Path) -> None:
    seed = LocalLog(tmp_path / "log.sqlite3")
    seed.create_stream("s", 4)
    for i in range(20):
        seed.append("s", [(f"k{j}", bytes(200)) for j in range(2000)], arrival_time=1000.0 + i)
    seed.close()
    for delay in (0.0, 0.001, 0.002, 0.004, 0.008):  # closing used to close the trimming thread's connection
        source = LocalSource(tmp_path, "s", 4, retention=Retention(max_age=None, max_shard_bytes=10 ** 9))
        await source.open()
        await asyncio.sleep(delay)
        await source.close()
    log = LocalLog(tmp_path / "log.sqlite3")
    try:
        assert log._conn().execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert sum(t.records for t in log.trim("s", Retention())) == 20 * 2000
    finally:
        log.close()


async def test_status_lag_leaves_out_what_retention_trimmed(tmp_path: Path) -> None:
    from streamfn.config import load_pipeline
    from streamfn.ops.status import collect

    (tmp_path / "handler_status_trim.py").write_text("def handle(batch, context):\n    return []\n")
    config = tmp_path / "pipeline.toml"
    config.write_text('name = "p"\nhandler = "handler_status_trim:handle"\n'
                      '[source]\ntype = "local"\nstream = "s"\nshards = 1\n')
    log = LocalLog(tmp_path / "state" / "log.sqlite3")
    log.create_stream("s", 1)
    log.append("s", [("k", b"old")] * 30, arrival_time=time.time() - 2 * DAY)
    log.append("s", [("k", b"new")] * 5)
    assert log.trim("s", Retention()) == [TrimmedRange("shard-0000", 1, 30)]
    log.close()
    rows = await collect(load_pipeline(config))
    assert [(row.checkpoint, row.tip, row.lag) for row in rows] == [(None, 35, 5)]
