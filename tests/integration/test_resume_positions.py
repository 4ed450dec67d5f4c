"""Readers started AT a record read earlier (``at_sequence``) on the real servers, and resume
positions the service refuses for good: a SourceError naming the shard and the position."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from streamfn.config import load_pipeline
from streamfn.connectors.kinesis.kpl import UserRecord, aggregate
from streamfn.connectors.local.store import LocalCheckpointStoreConfig
from streamfn.engine.pipeline import Pipeline
from streamfn.errors import SourceError
from streamfn.protocols.checkpoint import Checkpoint
from streamfn.protocols.source import ShardInfo, StartingPosition
from streamfn.records import Position
from tests.integration import test_dynamodb_streams as streams
from tests.integration.aws_support import client, create_stream, drain, put, unique
from tests.integration.test_kinesis import TRIM, source
from tests.integration.test_kinesis_e2e import wait_for


def at(position: Position) -> StartingPosition:
    return StartingPosition("at_sequence", position=position)


async def kpl_stream(endpoint: str) -> tuple[str, Any]:
    name = unique("at")
    async with client("kinesis", endpoint) as kinesis:
        await create_stream(kinesis, name, 1)
        await put(kinesis, name, [("agg1", aggregate([UserRecord(f"u{i}", b"a%d" % i) for i in range(5)]), None),
                                  ("plain", b"p", None),
                                  ("agg2", aggregate([UserRecord(f"v{i}", b"b%d" % i) for i in range(3)]), None)])
    src = source(endpoint, name, iterator_lifetime=0.0)  # every read takes a new iterator
    await src.open()
    return name, src


async def test_kinesis_reader_starts_at_a_record_or_sub_record(kinesis_endpoint: str, aws_env: dict[str, str]) -> None:
    _, src = await kpl_stream(kinesis_endpoint)
    try:
        shard = (await src.list_shards())[0]
        everything, _ = await drain(src.reader(shard, None, TRIM))
        data = [r.data for r in everything]
        assert len(data) == 9
        for index in (0, 3, 5, 6, 8):  # aggregate start, inside one, a plain record, the next aggregate
            rest, _ = await drain(src.reader(shard, None, at(everything[index].position)))
            assert [r.data for r in rest] == data[index:], index
    finally:
        await src.close()


async def test_kinesis_resume_after_an_aggregates_first_sub_record_keeps_the_rest(
    kinesis_endpoint: str, aws_env: dict[str, str]
) -> None:
    # Sub-record 0 of an aggregate has the same position as a plain record: re-reading AFTER its
    # sequence would skip the aggregate's other sub-records.
    _, src = await kpl_stream(kinesis_endpoint)
    try:
        shard = (await src.list_shards())[0]
        everything, _ = await drain(src.reader(shard, None, TRIM))
        assert everything[0].sub_sequence == 0 and everything[0].sequence == everything[1].sequence
        rest, _ = await drain(src.reader(shard, everything[0].position, TRIM))
        assert [r.data for r in rest] == [r.data for r in everything[1:]]
        one_by_one, _ = await drain(src.reader(shard, None, TRIM), max_records=1)  # re-acquired after each
        assert [r.data for r in one_by_one] == [r.data for r in everything]
    finally:
        await src.close()


async def test_kinesis_rejected_positions_block_with_the_shard_and_the_position(
    kinesis_endpoint: str, aws_env: dict[str, str]
) -> None:
    _, src = await kpl_stream(kinesis_endpoint)
    try:
        shard = (await src.list_shards())[0]
        first = (await drain(src.reader(shard, None, TRIM)))[0][0]
        made_up = Position(first.sequence - 1)  # what `pending_first - 1` used to send
        for after, start in ((None, at(made_up)), (made_up, TRIM)):
            with pytest.raises(SourceError) as caught:
                await src.reader(shard, after, start).read(10, 1.0)
            message = str(caught.value)
            assert shard.shard_id in message and str(made_up.sequence) in message
            assert "checkpoints" in message  # says what to do
        with pytest.raises(SourceError) as unknown:
            await src.reader(ShardInfo("shardId-000000000042"), None, TRIM).read(10, 1.0)
        assert "shardId-000000000042" in str(unknown.value) and "ResourceNotFoundException" in str(unknown.value)
    finally:
        await src.close()


async def test_dynamodb_streams_reader_starts_at_a_record(moto_endpoint: str, aws_env: dict[str, str]) -> None:
    table = unique("t")
    async with client("dynamodb", moto_endpoint) as ddb:
        arn = await streams.create_table(ddb, table)
        await streams.changes(ddb, table)
    src = streams.source(moto_endpoint, stream_arn=arn, iterator_lifetime=0.0)
    await src.open()
    try:
        (shard,) = await src.list_shards()
        everything, _ = await drain(src.reader(shard, None, TRIM))
        assert len(everything) == 4
        for index in range(4):
            rest, _ = await drain(src.reader(shard, None, at(everything[index].position)), max_records=1)
            assert [r.sequence for r in rest] == [r.sequence for r in everything[index:]]
    finally:
        await src.close()


async def test_a_checkpoint_the_stream_never_handed_out_blocks_the_shard_visibly(
    tmp_path: Path, kinesis_endpoint: str, aws_env: dict[str, str]
) -> None:
    """A checkpoint from another stream: the shard shows as blocked by its source, with the shard and
    the position, and ``--until-caught-up`` does not call that caught up."""
    name, src = await kpl_stream(kinesis_endpoint)
    try:
        shard = (await src.list_shards())[0]
        first = (await drain(src.reader(shard, None, TRIM)))[0][0]
    finally:
        await src.close()
    (tmp_path / "noop_handler.py").write_text("def handle(batch, context):\n    return []\n")
    config = tmp_path / "pipeline.toml"
    config.write_text(f'name = "stuck"\nhandler = "noop_handler:handle"\nstate_dir = "state"\n'
                      f'[source]\ntype = "kinesis"\nstream = "{name}"\nendpoint_url = "{kinesis_endpoint}"\n')
    loaded = load_pipeline(config)
    store = LocalCheckpointStoreConfig().build(loaded.context)
    await store.open()
    made_up = Position(first.sequence - 1)
    await store.save(shard.shard_id, Checkpoint(position=made_up))
    await store.flush()
    await store.close()
    pipeline = Pipeline(loaded)
    await pipeline.open()
    stop = asyncio.Event()
    run = asyncio.create_task(pipeline.run(stop, until_caught_up=True))
    try:
        def blocked() -> bool:
            runner = pipeline.runners.get(shard.shard_id)
            return runner is not None and runner.stats.blocked_since is not None

        await wait_for(blocked, 20, "the shard never showed as blocked")
        runner = pipeline.runners[shard.shard_id]
        assert runner.stats.blocked_cause == "source"
        assert shard.shard_id in runner.stats.last_error and str(made_up.sequence) in runner.stats.last_error
        await asyncio.sleep(1.0)
        assert not run.done(), "a blocked shard counted as caught up"
    finally:
        stop.set()
        await run
        await pipeline.shutdown()
