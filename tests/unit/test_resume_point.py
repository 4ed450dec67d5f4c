"""Where a restarted shard reads from: only at or after records the source handed out, and never
past a record that a recorded batch or an unfinished lane still needs; every source starts AT a
named record (``at_sequence``)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from streamfn.connectors.dynamodb_streams.source import DynamoDBStreamsSource, DynamoDBStreamsSourceConfig
from streamfn.connectors.kafka.source import KafkaSource, KafkaSourceConfig
from streamfn.connectors.kinesis.source import KinesisSource, KinesisSourceConfig
from streamfn.connectors.local.source import LocalSource
from streamfn.engine.lanes import Watermark, lane_of
from streamfn.engine.shard import resume_point
from streamfn.protocols.checkpoint import Checkpoint, advance, with_pending
from streamfn.protocols.source import ShardInfo, StartingPosition
from streamfn.records import Position

KINESIS = KinesisSource(KinesisSourceConfig(stream="s", endpoint_url="http://127.0.0.1:9", region="us-east-1"))
STREAMS = DynamoDBStreamsSource(DynamoDBStreamsSourceConfig(
    stream_arn="arn:aws:dynamodb:us-east-1:000000000000:table/t/stream/2026-01-01T00:00:00.000",
    endpoint_url="http://127.0.0.1:9", region="us-east-1"))
STARTS = [StartingPosition("trim_horizon"), StartingPosition("latest"), StartingPosition("at_timestamp", 1.0e9)]


@dataclass
class Shard:
    """Records as a source hands them out (sparse sequences, KPL sub-records) and their lanes."""

    positions: list[Position]
    lanes: list[int]


@st.composite
def shards(draw: st.DrawFn) -> Shard:
    sequence = draw(st.integers(10**20, 10**21))
    positions: list[Position] = []
    for _ in range(draw(st.integers(1, 40))):
        sequence += draw(st.integers(1, 10**6))  # never dense: gaps like Kinesis's
        subs = draw(st.integers(1, 4)) if draw(st.booleans()) else 1  # a KPL aggregate or a plain record
        positions.extend(Position(sequence, sub) for sub in range(subs))
    lane_count = draw(st.integers(1, 4))
    keys = draw(st.lists(st.text("abcdefgh", min_size=1, max_size=3), min_size=len(positions),
                         max_size=len(positions)))
    return Shard(positions, [lane_of(key, lane_count) for key in keys])


@dataclass
class Run:
    """The engine's progress writes for one shard, up to a crash: what the store then holds."""

    checkpoint: Checkpoint | None = None
    done: set[Position] = field(default_factory=set)


def crash_run(shard: Shard, batch_sizes: list[int], rng: random.Random, steps: int) -> Run:
    """Lanes form batches of their own records, record them pending, handle them (some partly,
    as a partial batch failure does) and move the watermark; the run stops after ``steps``."""
    lane_ids = sorted(set(shard.lanes))
    watermark = Watermark(max(lane_ids) + 1, None)
    for position, lane in zip(shard.positions, shard.lanes, strict=True):
        watermark.dispatched(position, lane)
    batches: dict[int, list[list[Position]]] = {}
    for lane in lane_ids:
        mine = [p for p, lane_of_p in zip(shard.positions, shard.lanes, strict=True) if lane_of_p == lane]
        chunks: list[list[Position]] = []
        while mine:
            size = batch_sizes[len(chunks) % len(batch_sizes)]
            chunks.append(mine[:size])
            mine = mine[size:]
        batches[lane] = chunks
    run = Run()
    for _ in range(steps):
        open_lanes = [lane for lane in lane_ids if batches[lane]]
        if not open_lanes:
            break
        lane = rng.choice(open_lanes)
        batch = batches[lane][0]
        # A call whose output is written: pending first (it guards the sink write), then done.
        handled = batch if rng.random() < 0.8 else batch[: rng.randint(1, len(batch))]
        run.checkpoint = with_pending(run.checkpoint, handled[0], handled[-1]) or run.checkpoint
        if rng.random() < 0.2:
            break  # crash between the sink write and the checkpoint
        run.done.update(handled)
        moved = watermark.lane_done(lane, handled[-1])
        if moved is not None:
            run.checkpoint = advance(run.checkpoint, Checkpoint(position=moved))
        if len(handled) == len(batch):
            batches[lane].pop(0)
        else:
            batches[lane][0] = batch[len(handled):]
    return run


@settings(max_examples=300, deadline=None)
@given(shard=shards(), batch_sizes=st.lists(st.integers(1, 6), min_size=1, max_size=4),
       seed=st.integers(0, 2**32), steps=st.integers(0, 60), starting=st.sampled_from(STARTS))
def test_a_resume_names_only_handed_out_records_and_skips_nothing_needed(
    shard: Shard, batch_sizes: list[int], seed: int, steps: int, starting: StartingPosition
) -> None:
    run = crash_run(shard, batch_sizes, random.Random(seed), steps)
    after, start = resume_point(run.checkpoint, starting)
    handed_out = set(shard.positions)
    checkpoint = run.checkpoint
    position = checkpoint.position if checkpoint else None
    if position is None:
        assert (after, start) == (None, starting)
        return
    # Everything a restart must see: records past the checkpoint, and every record of a recorded
    # batch it has not passed (the batch is formed again so its output keys repeat).
    assert checkpoint is not None
    needed = [p for p in shard.positions if p > position]
    needed += [p for first, last in checkpoint.pending if last > position for p in shard.positions
               if first <= p <= last]
    if after is not None:
        assert after in handed_out and start == starting
        assert all(p > after for p in needed)
    else:
        assert start.kind == "at_sequence" and start.position in handed_out
        assert all(p >= start.position for p in needed)
    skipped = [p for p in shard.positions if (p <= after if after is not None else p < start.position)]  # type: ignore[operator]
    assert all(p in run.done for p in skipped), "a record the reader skips was never handled"
    # The requests the readers then send name those records' own sequence numbers.
    sequences = {p.sequence for p in shard.positions}
    info = ShardInfo("shardId-000000000000")
    kinesis = KINESIS.reader(info, after, start).iterator_request(after, None)
    assert int(kinesis["StartingSequenceNumber"]) in sequences
    assert kinesis["ShardIteratorType"] == "AT_SEQUENCE_NUMBER"
    streams = STREAMS.reader(info, after, start).iterator_request(after, None)
    assert int(streams["SequenceNumber"]) in sequences
    assert streams["ShardIteratorType"] == ("AFTER_SEQUENCE_NUMBER" if after is not None else "AT_SEQUENCE_NUMBER")
    assert len(streams["SequenceNumber"]) >= 21


def test_a_batch_finished_past_a_lagging_lane_resumes_at_its_first_record() -> None:
    # Lane A wrote [10 .. 30]; lane B finished 15 but not 25: the watermark stands at 20.
    checkpoint = Checkpoint(position=Position(20), pending=((Position(10), Position(30)),))
    after, start = resume_point(checkpoint, StartingPosition("latest"))
    assert after is None
    assert start == StartingPosition("at_sequence", position=Position(10))


def test_a_kpl_sub_record_resume_names_the_aggregate_and_skips_sub_records_before_it() -> None:
    start = StartingPosition("at_sequence", position=Position(4953, 3))
    request = KINESIS.reader(ShardInfo("shardId-0"), None, start).iterator_request(None, None)
    assert request["ShardIteratorType"] == "AT_SEQUENCE_NUMBER" and request["StartingSequenceNumber"] == "4953"


def test_a_checkpoint_with_nothing_pending_resumes_after_it() -> None:
    checkpoint = Checkpoint(position=Position(77, 2), pending=((Position(60), Position(77, 2)),))
    assert resume_point(checkpoint, StartingPosition()) == (Position(77, 2), StartingPosition())
    assert resume_point(None, StartingPosition("latest")) == (None, StartingPosition("latest"))


def test_at_sequence_needs_a_position() -> None:
    import pytest

    with pytest.raises(ValueError):
        StartingPosition("at_sequence")
    with pytest.raises(ValueError):
        StartingPosition("trim_horizon", position=Position(1))


async def test_the_local_log_starts_at_a_record(tmp_path: Path) -> None:
    source = LocalSource(tmp_path, "clicks", 1)
    await source.open()
    try:
        source.log.append("clicks", [("k", b"1"), ("k", b"2"), ("k", b"3")])
        shard = (await source.list_shards())[0]
        reader = source.reader(shard, None, StartingPosition("at_sequence", position=Position(2)))
        assert [r.data for r in (await reader.read(10, 0)).records] == [b"2", b"3"]
    finally:
        await source.close()


async def test_kafka_starts_at_the_named_offset_whatever_its_configured_start() -> None:
    override = KafkaSource(KafkaSourceConfig(bootstrap_servers="127.0.0.1:1", topic="clicks", group_id="g",
                                             starting_position="latest"))
    start = StartingPosition("at_sequence", position=Position(7))
    assert override._starting(start) == start
    assert await override.start_offset(("clicks", 0), None, start) == 7
    assert await override.start_offset(("clicks", 0), Position(7), start) == 8  # after a checkpoint first
