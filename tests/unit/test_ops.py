"""Pure logic of the operator verbs: lag, times, the status table, the replay's bounded reader."""

from __future__ import annotations

import pytest

from streamfn.errors import ConfigError
from streamfn.ops.parts import parse_moment
from streamfn.ops.replay import BoundedSource, ShardPlan
from streamfn.ops.status import ShardStatus, Tip, lag_of, render_table
from streamfn.ops.tail import starting_position
from streamfn.protocols.checkpoint import Checkpoint
from streamfn.protocols.source import ReadResult, ShardInfo, ShardReader, Source, SourceTraits, StartingPosition
from streamfn.records import Position, Record


def test_lag_counts_records_after_the_checkpoint_or_the_oldest_retained() -> None:
    assert lag_of(None, None) is None
    assert lag_of(None, Tip(10)) == 10
    assert lag_of(Checkpoint(position=Position(7)), Tip(10)) == 3
    assert lag_of(None, Tip(last=10, before_first=4)) == 6, "trimmed records are not lag"
    assert lag_of(Checkpoint(position=Position(2)), Tip(last=10, before_first=4)) == 6
    assert lag_of(Checkpoint(position=Position(12)), Tip(10)) == 0
    assert lag_of(Checkpoint(position=Position(3), shard_end=True), Tip(10)) == 0


def test_times_are_epoch_seconds_or_iso() -> None:
    assert parse_moment("1700000000.5") == 1700000000.5
    assert parse_moment("2023-11-14T22:13:20Z") == 1700000000.0
    assert parse_moment("2023-11-14T22:13:20") == 1700000000.0, "no zone means UTC"
    assert parse_moment("2023-11-14T23:13:20+01:00") == 1700000000.0
    with pytest.raises(ConfigError, match="not a time"):
        parse_moment("yesterday")
    assert starting_position("latest") == StartingPosition("latest")
    assert starting_position("2023-11-14T22:13:20Z") == StartingPosition("at_timestamp", 1700000000.0)


def test_status_table_aligns_and_says_what_is_unknown() -> None:
    rows = [ShardStatus(pipeline="p", shard_id="shard-0000", checkpoint="12", tip=20, lag=8, blocked_seconds=0.0),
            ShardStatus(pipeline="p", shard_id="shard-0001", blocked_seconds=42.4, attempt=3, lease_owner="w1"),
            ShardStatus(pipeline="p", shard_id="shard-0002")]
    lines = render_table(rows, daemon_seen=True).splitlines()
    assert lines[0].split() == ["PIPELINE", "SHARD", "CHECKPOINT", "TIP", "LAG", "LEASE", "OWNER", "BLOCKED"]
    assert lines[1].split() == ["p", "shard-0000", "12", "20", "8", "-", "no"]
    assert lines[2].split() == ["p", "shard-0001", "-", "-", "-", "w1", "YES", "42s", "(attempt", "3)"]
    assert lines[3].split()[-1] == "idle", "a shard the daemon does not run"
    assert render_table(rows[2:], daemon_seen=False).splitlines()[1].split()[-1] == "?"


class ListReader(ShardReader):
    def __init__(self, batches: list[list[Record]]) -> None:
        self.batches = batches
        self.closed = False

    async def read(self, max_records: int, wait: float) -> ReadResult:
        return ReadResult(self.batches.pop(0) if self.batches else [])

    async def close(self) -> None:
        self.closed = True


class ListSource(Source):
    traits = SourceTraits(kind="test")
    name = "s"

    def __init__(self, reader: ListReader) -> None:
        self._reader = reader

    def reader(self, shard: ShardInfo, after: Position | None, start: StartingPosition) -> ListReader:
        return self._reader


def record(sequence: int, arrival: float) -> Record:
    return Record("shard-0", sequence, "k", b"{}", arrival)


async def test_bounded_reader_ends_the_shard_after_the_last_record_in_range() -> None:
    # 5 arrived "before" 4 (Kinesis arrival times are approximate): the range is a prefix, with no gap
    inner = ListReader([[record(1, 10.0), record(2, 11.0)], [record(3, 12.0), record(4, 13.0), record(5, 11.5)]])
    source = BoundedSource(ListSource(inner), {"shard-0": ShardPlan(start=StartingPosition())}, until=12.0, lanes=1)
    assert source.traits.kind == "test", "everything else passes through"
    reader = source.reader(ShardInfo("shard-0"), None, StartingPosition())
    first = await reader.read(10, 0.1)
    assert [r.sequence for r in first.records] == [1, 2] and not first.shard_end
    second = await reader.read(10, 0.1)
    assert [r.sequence for r in second.records] == [3] and second.shard_end
    assert (await reader.read(10, 0.1)).shard_end and not (await reader.read(10, 0.1)).records
    assert source.delivered == 3
    await reader.close()
    assert inner.closed


async def test_unbounded_reader_passes_everything() -> None:
    source = BoundedSource(ListSource(ListReader([[record(1, 10.0)], []])),
                           {"shard-0": ShardPlan(start=StartingPosition())}, until=None, lanes=1)
    reader = source.reader(ShardInfo("shard-0"), None, StartingPosition())
    assert [r.sequence for r in (await reader.read(10, 0.1)).records] == [1]
    assert not (await reader.read(10, 0.1)).shard_end
