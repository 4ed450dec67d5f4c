"""The batcher: count, bytes and window limits, filters, and exact replay of recorded batches."""

from __future__ import annotations

import time
from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from streamfn import Position, Record
from streamfn.engine.batching import MIN_READ, Batcher, BatchLimits
from streamfn.protocols.source import ReadResult, ShardReader


class ListReader(ShardReader):
    """Hands out a fixed list of records in chunks of at most ``chunk`` (pure, no I/O)."""

    def __init__(self, records: list[Record], chunk: int = 7, end: bool = False) -> None:
        self._records = records
        self._chunk = chunk
        self._end = end
        self.reads = 0

    async def read(self, max_records: int, wait: float) -> ReadResult:
        self.reads += 1
        take = self._records[: min(self._chunk, max_records)]
        self._records = self._records[len(take) :]
        return ReadResult(take, shard_end=self._end and not self._records)

    async def close(self) -> None:
        return None


def records(n: int, size: int = 10) -> list[Record]:
    return [Record("s", i, f"k{i % 3}", b"x" * size, 0.0) for i in range(1, n + 1)]


async def drain(batcher: Batcher) -> list[list[int]]:
    batches = []
    while (unit := await batcher.next()) is not None:
        if unit.records:
            batches.append([r.sequence for r in unit.records])
        if unit.shard_end:
            break
    return batches


async def test_count_limit() -> None:
    batches = await drain(Batcher(ListReader(records(25), chunk=100), BatchLimits(max_records=10)))
    assert [len(b) for b in batches] == [10, 10, 5]
    assert sum(batches, []) == list(range(1, 26))


async def test_bytes_limit_never_splits_a_record_and_never_exceeds() -> None:
    batches = await drain(Batcher(ListReader(records(10, size=30)), BatchLimits(max_records=100, max_bytes=100)))
    assert all(len(b) * 30 <= 100 for b in batches)
    assert sum(batches, []) == list(range(1, 11))


async def test_oversized_record_goes_alone() -> None:
    batches = await drain(Batcher(ListReader(records(3, size=500)), BatchLimits(max_bytes=100)))
    assert batches == [[1], [2], [3]]


async def test_window_gathers_reads_until_it_expires() -> None:
    reader = ListReader(records(30), chunk=3)
    started = time.monotonic()
    unit = await Batcher(reader, BatchLimits(max_records=100, window=0.2)).next()
    assert unit is not None
    assert [r.sequence for r in unit.records] == list(range(1, 31))
    assert reader.reads > 1
    assert time.monotonic() - started >= 0.19


async def test_filter_skips_but_moves_through() -> None:
    batcher = Batcher(ListReader(records(10), chunk=100), BatchLimits(max_records=100),
                      accept=lambda r: r.sequence % 2 == 0)
    unit = await batcher.next()
    assert unit is not None
    assert [r.sequence for r in unit.records] == [2, 4, 6, 8, 10]
    assert batcher.filtered == 5


async def test_all_filtered_still_yields_a_unit_to_checkpoint() -> None:
    unit = await Batcher(ListReader(records(4)), BatchLimits(), accept=lambda r: False).next()
    assert unit is not None and unit.records == [] and unit.through == Position(4)


async def test_shard_end_is_reported_after_the_last_records() -> None:
    batcher = Batcher(ListReader(records(5), end=True), BatchLimits(max_records=3))
    first, second = await batcher.next(), await batcher.next()
    assert first is not None and not first.shard_end
    assert second is not None and second.shard_end and [r.sequence for r in second.records] == [4, 5]


async def test_replay_forms_recorded_batches_then_batches_normally() -> None:
    replay = deque([(Position(3), Position(9)), (Position(10), Position(11))])
    batches = await drain(Batcher(ListReader(records(20), chunk=100), BatchLimits(max_records=4), replay=replay))
    assert batches[:3] == [[1, 2], [3, 4, 5, 6, 7, 8, 9], [10, 11]]
    assert sum(batches[3:], []) == list(range(12, 21))
    assert all(len(b) <= 4 for b in batches[3:])


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 60),
    max_records=st.integers(1, 12),
    chunk=st.integers(1, 9),
    cuts=st.lists(st.integers(1, 60), max_size=6),
)
async def test_replay_property_every_record_once_in_order(
    n: int, max_records: int, chunk: int, cuts: list[int]
) -> None:
    bounds = sorted({c for c in cuts if c <= n})
    replay = deque((Position(a), Position(b)) for a, b in zip(bounds[::2], bounds[1::2], strict=False))
    batches = await drain(Batcher(ListReader(records(n), chunk=chunk), BatchLimits(max_records=max_records),
                                  replay=replay))
    assert sum(batches, []) == list(range(1, n + 1))
    for a, b in zip(bounds[::2], bounds[1::2], strict=False):
        assert list(range(a, b + 1)) in batches


class AskedReader(ListReader):
    """Remembers how many records each read asked for."""

    def __init__(self, records: list[Record], chunk: int) -> None:
        super().__init__(records, chunk=chunk)
        self.asked: list[int] = []

    async def read(self, max_records: int, wait: float) -> ReadResult:
        self.asked.append(max_records)
        return await super().read(max_records, wait)


async def test_reads_ask_for_more_than_a_small_batch_and_batches_cut_the_rest() -> None:
    reader = AskedReader(records(MIN_READ + 10), chunk=10_000)
    batches = await drain(Batcher(reader, BatchLimits(max_records=1)))
    assert batches == [[i] for i in range(1, MIN_READ + 11)]
    assert set(reader.asked) == {MIN_READ}
    assert reader.reads == 3  # MIN_READ records, the last 10, then an empty read: not a read per batch


@settings(max_examples=80, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 50), max_size=80),
    max_records=st.integers(1, 12),
    max_bytes=st.integers(1, 120),
    chunk=st.integers(1, 90),
)
async def test_plain_batches_hold_every_record_once_in_order_within_limits(
    sizes: list[int], max_records: int, max_bytes: int, chunk: int
) -> None:
    shard = [Record("s", i, "k", b"x" * size, 0.0) for i, size in enumerate(sizes, 1)]
    batches = await drain(Batcher(ListReader(shard, chunk=chunk), BatchLimits(max_records=max_records,
                                                                             max_bytes=max_bytes)))
    assert sum(batches, []) == list(range(1, len(sizes) + 1))
    for batch in batches:
        assert 1 <= len(batch) <= max_records
        # Over the byte limit only as a batch of one record (a record is never split).
        assert len(batch) == 1 or sum(sizes[i - 1] for i in batch) <= max_bytes


async def test_reads_are_whole_multiples_of_the_batch_size() -> None:
    reader = AskedReader(records(400), chunk=10_000)
    batches = await drain(Batcher(reader, BatchLimits(max_records=100)))
    assert batches == [list(range(i, i + 100)) for i in range(1, 401, 100)]  # none cut short by a read
    assert set(reader.asked) == {100 * max(1, MIN_READ // 100)}
    reader = AskedReader(records(10), chunk=10_000)
    await drain(Batcher(reader, BatchLimits(max_records=3)))
    assert set(reader.asked) == {MIN_READ // 3 * 3}
    reader = AskedReader(records(10), chunk=10_000)
    await drain(Batcher(reader, BatchLimits(max_records=1000)))
    assert set(reader.asked) == {1000}
