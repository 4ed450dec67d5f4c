"""A columnar ``Batch`` is the same sequence of records as the list it stands for: indexing, slicing,
joining, ``data``, ``nbytes``, ``json()``; Records and lazy columns are made only when read; and
the batcher forms the same batches from columnar reads as from lists of records."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfn.connectors.local.log import LAYOUT_VERSION, LocalLog, _block_payload, _decode_block
from streamfn.engine.batching import Batcher, BatchLimits
from streamfn.protocols.source import ReadResult, ShardReader
from streamfn.records import Batch, DataColumn, LazyColumn, Position, Record

Columns = tuple[list[bytes], list[int], list[str], list[float], list[int] | None, list[Any] | None]


@st.composite
def columns(draw: st.DrawFn, min_size: int = 0) -> Columns:
    n = draw(st.integers(min_size, 12))
    start = draw(st.integers(0, 1000))
    sequences = list(range(start, start + n)) if draw(st.booleans()) else sorted(
        draw(st.sets(st.integers(0, 10_000), min_size=n, max_size=n)))
    datas = [draw(st.sampled_from([b'{"a":1}', b"[2]", b"x", b"", b'"s"'])) for _ in range(n)]
    keys = [f"k{i}" for i in range(n)]
    arrivals = [float(draw(st.integers(0, 5))) for _ in range(n)]
    subs = [draw(st.integers(0, 3)) for _ in range(n)] if draw(st.booleans()) else None
    attrs = [{"i": i} for i in range(n)] if draw(st.booleans()) else None
    return datas, sequences, keys, arrivals, subs, attrs


def as_records(c: Columns) -> list[Record]:
    datas, sequences, keys, arrivals, subs, attrs = c
    return [Record("s", sequences[i], keys[i], datas[i], arrivals[i], subs[i] if subs else 0,
                   attrs[i] if attrs else None) for i in range(len(datas))]


def stored(datas: list[bytes], cut: int = 0) -> Sequence[bytes]:
    """``datas`` as the local log hands them out: written as one or two blocks (layout 2) and read back."""
    if not datas:
        return datas
    cut = cut % len(datas)
    parts = [datas[:cut], datas[cut:]] if cut else [datas]
    blocks = [_decode_block(1, 0.0, msgspec.msgpack.encode(_block_payload([""] * len(part), part))) for part in parts]
    return DataColumn([(block.buffer, block.ends, 0, len(block.ends), block.lines) for block in blocks])


def as_batch(c: Columns, lazy_keys: bool, in_blocks: int | None = None) -> Batch:
    datas, sequences, keys, arrivals, subs, attrs = c
    column = datas if in_blocks is None else stored(datas, in_blocks)
    dense = sequences == list(range(sequences[0], sequences[0] + len(sequences))) if sequences else False
    return Batch.from_columns(
        "s", column, range(sequences[0], sequences[-1] + 1) if dense else sequences,
        LazyColumn(lambda: keys, len(keys)) if lazy_keys else keys, arrivals, subs, attrs)


def decoded(batch: Batch) -> list[Any] | str:
    try:
        return batch.json()
    except orjson.JSONDecodeError:
        return "not JSON"


@settings(max_examples=200, deadline=None)
@given(c=columns(), lazy=st.booleans(), cut=st.tuples(st.integers(-14, 14), st.integers(-14, 14)),
       blocks=st.none() | st.integers(0, 12))
def test_a_columnar_batch_reads_as_its_records(c: Columns, lazy: bool, cut: tuple[int, int],
                                               blocks: int | None) -> None:
    records = as_records(c)
    batch = as_batch(c, lazy, blocks)
    assert len(batch) == len(records)
    assert batch.data == [r.data for r in records]
    assert batch.nbytes == sum(len(r.data) for r in records)
    assert decoded(batch) == decoded(Batch("s", records))
    for i in range(-len(records), len(records)):
        assert batch.position_at(i) == records[i].position
        assert batch.arrival_at(i) == records[i].arrival_time
    part = batch[cut[0] : cut[1]]
    assert isinstance(part, Batch) and part == records[cut[0] : cut[1]]
    assert part.nbytes == sum(len(r.data) for r in records[cut[0] : cut[1]])
    assert decoded(part) == decoded(Batch("s", records[cut[0] : cut[1]]))
    for i in range(-len(records), len(records)):
        assert batch[i] == records[i]
    assert list(batch) == records and batch == Batch("s", records)


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(columns(), max_size=4), lazy=st.lists(st.booleans(), min_size=4, max_size=4),
       listed=st.lists(st.sampled_from(["records", "columns", "blocks"]), min_size=4, max_size=4))
def test_joined_batches_read_as_their_records_in_order(parts: list[Columns], lazy: list[bool],
                                                       listed: list[str]) -> None:
    batches = [Batch("s", as_records(c)) if listed[i] == "records" else
               as_batch(c, lazy[i], 1 if listed[i] == "blocks" else None) for i, c in enumerate(parts)]
    joined = Batch.join("s", batches)
    expected = [r for c in parts for r in as_records(c)]
    assert joined == expected
    assert joined.data == [r.data for r in expected]
    assert [joined.position_at(i) for i in range(len(expected))] == [r.position for r in expected]
    assert joined.nbytes == sum(len(r.data) for r in expected)
    assert decoded(joined) == decoded(Batch("s", expected))


@settings(max_examples=300, deadline=None)
@given(datas=st.lists(st.sampled_from([b'{"a": 1}', b"[2]", b" 3 ", b"", b" ", b"\r", b"1 2", b"x", b"[1,\n2]",
                                       b'"\xc3\xa9"', b"\xff"]), max_size=10),
       cut=st.integers(0, 10), start=st.integers(0, 10), stop=st.integers(0, 10))
def test_stored_data_reads_back_exactly_and_decodes_as_each_record(datas: list[bytes], cut: int, start: int,
                                                                  stop: int) -> None:
    column = stored(datas, cut)
    assert list(column) == datas and len(column) == len(datas)
    assert [column[i] for i in range(-len(datas), len(datas))] == datas[-len(datas):] + datas
    assert list(column[start:stop]) == datas[start:stop]
    batch = Batch.from_columns("s", column, range(1, len(datas) + 1), [""] * len(datas), [0.0] * len(datas))
    assert decoded(batch) == decoded(Batch("s", as_records((datas, list(range(1, len(datas) + 1)), [""] * len(datas),
                                                             [0.0] * len(datas), None, None))))
    assert batch[start:stop].nbytes == sum(map(len, datas[start:stop]))


def test_consecutive_dense_parts_join_into_one_range() -> None:
    a = Batch.from_columns("s", [b"1", b"2"], range(5, 7), ["a", "b"], [0.0, 0.0])
    b = Batch.from_columns("s", [b"3"], range(7, 8), ["c"], [0.0])
    joined = Batch.join("s", [a, b])
    assert [joined.position_at(i).sequence for i in range(3)] == [5, 6, 7]
    assert joined.json() == [1, 2, 3]


def test_lazy_columns_and_records_are_made_only_when_read(tmp_path: Path) -> None:
    made: list[int] = []

    def make_keys() -> list[str]:
        made.append(1)
        return ["a", "b", "c"]

    keys = LazyColumn(make_keys, 3)
    batch = Batch.from_columns("s", [b"1", b"2", b"3"], range(1, 4), keys, [0.0] * 3)
    part = Batch.join("s", [batch[1:], batch[:1]])
    assert part.json() == [2, 3, 1] and part.nbytes == 3 and len(part) == 3
    assert made == []  # decoding the data needs no key
    assert [r.partition_key for r in part] == ["b", "c", "a"]
    assert made == [1]  # made once, for every slice of the column


def test_the_local_log_hands_out_columns_and_decodes_keys_on_demand(tmp_path: Path) -> None:
    log = LocalLog(tmp_path / "log.sqlite3")
    log.create_stream("s", 1)
    log.append("s", [(f"user-{i}", msgspec.json.encode({"i": i})) for i in range(2500)])
    log.append("s", [("late", b'{"i": 2500}')])
    shard = log.shard_ids("s")[0]
    first = log.read("s", shard, 0, 1200)  # spans two stored blocks
    assert first.json() == [{"i": i} for i in range(1200)]
    assert [first.position_at(i).sequence for i in (0, -1)] == [1, 1200]
    rest = log.read("s", shard, 1200, 5000)
    assert len(rest) == 1301 and rest[-1] == Record(shard, 2501, "late", b'{"i": 2500}', rest.arrival_at(-1))
    assert [r.partition_key for r in first[998:1001]] == ["user-998", "user-999", "user-1000"]
    log.close()


class ChunkReader(ShardReader):
    """Hands out a fixed run of records in chunks, as lists or as columnar batches."""

    def __init__(self, records: list[Record], chunks: list[int], columnar: bool) -> None:
        self._records, self._chunks, self._columnar = records, deque(chunks), columnar

    async def read(self, max_records: int, wait: float) -> ReadResult:
        size = min(self._chunks.popleft() if self._chunks else 5, max_records)
        taken, self._records = self._records[:size], self._records[size:]
        if not self._columnar or not taken:
            return ReadResult(taken, shard_end=not self._records)
        columnar = Batch.from_columns(
            "s", [r.data for r in taken], range(taken[0].sequence, taken[-1].sequence + 1),
            LazyColumn(lambda: [r.partition_key for r in taken], len(taken)), [r.arrival_time for r in taken])
        return ReadResult(columnar, shard_end=not self._records)

    async def close(self) -> None:
        return None


async def batches_of(reader: ShardReader, limits: BatchLimits, accept: Any, replay: list[tuple[int, int]],
                     window: float) -> list[tuple[list[Record], Position, bool]]:
    batcher = Batcher(reader, limits, accept=accept, replay=deque((Position(a), Position(b)) for a, b in replay),
                      tumbling_window=window, shard_id="s")
    out = []
    while (unit := await batcher.next()) is not None:
        out.append((list(unit.records), unit.through, unit.window_closed))
        if unit.shard_end:
            break
    return out


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(0, 60),
    chunks=st.lists(st.integers(1, 40), max_size=8),
    max_records=st.integers(1, 25),
    max_bytes=st.integers(1, 200),
    sizes=st.lists(st.integers(0, 30), min_size=60, max_size=60),
    filtered=st.booleans(),
    window=st.sampled_from([0.0, 2.0]),
    cuts=st.lists(st.integers(1, 60), max_size=4),
)
async def test_columnar_reads_form_the_same_batches_as_lists(
    n: int, chunks: list[int], max_records: int, max_bytes: int, sizes: list[int], filtered: bool,
    window: float, cuts: list[int],
) -> None:
    records = [Record("s", i, f"k{i}", b"x" * sizes[i - 1], float(i // 3)) for i in range(1, n + 1)]
    bounds = sorted({c for c in cuts if c <= n})
    replay = list(zip(bounds[::2], bounds[1::2], strict=False))
    limits = BatchLimits(max_records=max_records, max_bytes=max_bytes)
    accept = (lambda r: r.sequence % 3 != 0) if filtered else None
    from_lists = await batches_of(ChunkReader(records, chunks, False), limits, accept, replay, window)
    from_columns = await batches_of(ChunkReader(records, chunks, True), limits, accept, replay, window)
    assert from_columns == from_lists
    handed = [r for batch, _, _ in from_lists for r in batch]
    assert handed == [r for r in records if accept is None or accept(r)]


def test_blocks_of_the_previous_layout_are_read_with_the_new_ones(tmp_path: Path) -> None:
    """A log upgraded in place keeps its layout-1 blocks (``[keys, datas]``): they read back exactly,
    before and after the blocks written since."""
    log = LocalLog(tmp_path / "log.sqlite3")
    log.create_stream("s", 1)
    conn = log._conn()
    old = [(f"k{i}", b'{"old": %d}' % i) for i in range(1, 6)]
    conn.execute("INSERT INTO blocks VALUES ('s', 0, 1, 5, 1.0, ?)",
                 (msgspec.msgpack.encode(([k for k, _ in old], [d for _, d in old])),))
    conn.execute("UPDATE shards SET last_seq = 5, last_arrival = 1.0 WHERE stream = 's' AND shard = 0")
    log.append("s", [("new", b'{"new": 6}'), ("new", b"not json")])
    shard = log.shard_ids("s")[0]
    batch = log.read("s", shard, 0, 100)
    assert [(r.sequence, r.partition_key, r.data) for r in batch] == [
        (i, k, d) for i, (k, d) in enumerate([*old, ("new", b'{"new": 6}'), ("new", b"not json")], 1)]
    assert batch[:6].json() == [{"old": i} for i in range(1, 6)] + [{"new": 6}]
    assert conn.execute("PRAGMA user_version").fetchone()[0] == LAYOUT_VERSION
    log.close()


@settings(max_examples=40, deadline=None)
@given(appends=st.lists(st.integers(1, 30), min_size=1, max_size=8), reads=st.lists(st.integers(1, 40), min_size=1,
                                                                                     max_size=12))
def test_reads_of_any_size_across_blocks_give_every_record_once_in_order(
    tmp_path_factory: Any, appends: list[int], reads: list[int]
) -> None:
    log = LocalLog(tmp_path_factory.mktemp("log") / "log.sqlite3")
    log.create_stream("s", 1)
    written: list[tuple[str, bytes]] = []
    for size in appends:
        chunk = [(f"k{len(written) + i}", b"[%d]" % (len(written) + i)) for i in range(size)]
        log.append("s", chunk)
        written += chunk
    shard, after, seen = log.shard_ids("s")[0], 0, []
    for size in itertools.cycle(reads):
        batch = log.read("s", shard, after, size)
        if not batch:
            break
        expected = written[after : after + len(batch)]
        assert len(batch) <= size and batch.json() == [orjson.loads(data) for _, data in expected]
        seen += [(r.partition_key, r.data) for r in batch]
        after = batch.position_at(-1).sequence
    assert seen == written
    log.close()
