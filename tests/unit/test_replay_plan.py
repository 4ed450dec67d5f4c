"""The replay's pure parts: batch bounds read back from object keys, and the reader that keeps live batches whole."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfn.connectors.shared.keys import DEFAULT_TEMPLATE, render_key
from streamfn.engine.lanes import lane_of
from streamfn.ops.batch_bounds import bounds_of, disjoint, key_pattern, literal_prefix
from streamfn.ops.replay import BoundedSource, ShardPlan
from streamfn.protocols.sink import SinkBatch
from streamfn.protocols.source import ReadResult, ShardInfo, ShardReader, Source, SourceTraits, StartingPosition
from streamfn.records import Position, Record

TEMPLATES = [
    DEFAULT_TEMPLATE,
    "{year}/{month}/{day}/{hour}/{pipeline}-{shard_id}-{first}-{last}.json",
    "out/{stream}/{shard_id}/{first_seq}_{first_sub}-{last_seq}_{last_sub}",
    "{shard_id}/{first}/{last}/{shard_id}.ndjson",
]
sequences = st.integers(min_value=0, max_value=2**190)  # Kinesis sequence numbers reach ~2**185
subs = st.integers(min_value=0, max_value=3)


@given(template=st.sampled_from(TEMPLATES), first=sequences, span=st.integers(0, 10**6), sub=subs,
       shard=st.sampled_from(["shard-0000", "shardId-000000000007", "topic-a-3"]), gz=st.booleans())
def test_bounds_come_back_from_any_rendered_key(template: str, first: int, span: int, sub: int, shard: str,
                                                gz: bool) -> None:
    batch = SinkBatch(pipeline="orders", stream="s", shard_id=shard, first=Position(first, sub),
                      last=Position(first + span, sub), first_arrival=1.7e9, items=[])
    key = render_key(template, batch) + (".gz" if gz else "")
    assert key.startswith(literal_prefix(template))
    found = bounds_of([key], key_pattern(template, pipeline="orders", stream="s"))
    assert found == {shard: [(batch.first, batch.last)]}


def test_keys_of_other_pipelines_windows_and_strays_are_not_batches() -> None:
    pattern = key_pattern(DEFAULT_TEMPLATE, pipeline="p", stream="s")
    keys = ["p/shard-0/00000000000000000001-00000000000000000010.ndjson",
            "q/shard-0/00000000000000000011-00000000000000000020.ndjson",  # another pipeline
            "p/shard-0/00000000000000000010-00000000000000000010.window-final.ndjson",
            "p/shard-0/notes.txt"]
    assert bounds_of(keys, pattern) == {"shard-0": [(Position(1), Position(10))]}
    assert re.escape("p.x") in key_pattern("{pipeline}/{shard_id}/{first}-{last}", pipeline="p.x", stream="s").pattern


def test_overlapping_bounds_keep_the_first_with_one_lane() -> None:
    bounds = [(Position(1), Position(10)), (Position(5), Position(20)), (Position(11), Position(20))]
    assert disjoint(bounds) == [(Position(1), Position(10)), (Position(11), Position(20))]


class ListReader(ShardReader):
    def __init__(self, records: list[Record]) -> None:
        self.records = records

    async def read(self, max_records: int, wait: float) -> ReadResult:
        taken, self.records = self.records[:max_records], self.records[max_records:]
        return ReadResult(taken, shard_end=not self.records)  # a closed shard: the reader has an end

    async def close(self) -> None:
        return None


class ListSource(Source):
    traits = SourceTraits(kind="memory")

    name = "s"

    def __init__(self, records: list[Record]) -> None:
        self._records = records

    def reader(self, shard: ShardInfo, after: Position | None, start: StartingPosition) -> ListReader:
        return ListReader(list(self._records))


async def delivered(plan: ShardPlan, records: list[Record], *, lanes: int = 1, until: float | None = None,
                    read_size: int = 3) -> list[int]:
    source = BoundedSource(ListSource(records), {"shard-0": plan}, until=until, lanes=lanes)
    reader = source.reader(ShardInfo("shard-0"), None, StartingPosition())
    out: list[int] = []
    for _ in range(100):
        result = await reader.read(read_size, 0.0)
        out.extend(r.sequence for r in result.records)
        if result.shard_end:
            return out
    raise AssertionError("the reader never ended")


def batches(*pairs: tuple[int, int]) -> tuple[tuple[Position, Position], ...]:
    return tuple((Position(a), Position(b)) for a, b in pairs)


async def test_the_reader_stops_at_the_checkpoint() -> None:
    records = [Record("shard-0", i, "k", b"", 100.0 + i) for i in range(1, 21)]
    plan = ShardPlan(start=StartingPosition(), batches=batches((1, 5), (6, 10)), stop=Position(10))
    assert await delivered(plan, records) == list(range(1, 11))


async def test_the_reader_completes_a_batch_that_until_cuts() -> None:
    records = [Record("shard-0", i, "k", b"", 100.0 + i) for i in range(1, 21)]
    plan = ShardPlan(start=StartingPosition(), batches=batches((1, 5), (6, 10), (11, 15)))
    assert await delivered(plan, records, until=107.0) == list(range(1, 11)), "6..10 whole, 11.. not begun"


@pytest.mark.parametrize("read_size", [3, 100])
async def test_the_reader_skips_what_is_left_of_a_batch_whose_start_is_gone(read_size: int) -> None:
    records = [Record("shard-0", i, "k", b"", 100.0) for i in range(4, 11)]
    plan = ShardPlan(start=StartingPosition(), batches=batches((6, 10)), skip_through=Position(5))
    assert await delivered(plan, records, read_size=read_size) == list(range(6, 11)), "and a closed shard ends"


async def test_with_lanes_only_the_straddling_batch_lane_goes_past_the_checkpoint() -> None:
    # keys "a" and "b" land in different lanes of 2; lane a's batch 1..7 straddles the checkpoint at 4
    by_lane = {lane_of(f"k{i}", 2): f"k{i}" for i in range(20)}
    keys = {"a": by_lane[0], "b": by_lane[1]}
    layout = ["a", "b", "a", "b", "a", "b", "a", "b"]
    records = [Record("shard-0", i, keys[k], b"", 100.0) for i, k in enumerate(layout, start=1)]
    plan = ShardPlan(start=StartingPosition(), batches=batches((1, 7), (2, 4)), stop=Position(4))
    assert await delivered(plan, records, lanes=2) == [1, 2, 3, 4, 5, 7]
