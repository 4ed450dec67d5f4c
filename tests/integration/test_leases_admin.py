"""``streamfn checkpoints show|reset|set`` on a real lease table (moto server)."""

from __future__ import annotations

import asyncio

import pytest

from streamfn.connectors.lease_table.store import DynamoDBCheckpointStore, DynamoDBCheckpointStoreConfig
from streamfn.errors import LeaseLostError
from streamfn.ops.checkpoints.lease_table import (
    LeasesHeldError,
    render,
    reset_checkpoints,
    set_checkpoint,
    show_checkpoints,
)
from streamfn.protocols.checkpoint import Checkpoint
from streamfn.protocols.source import StartingPosition
from streamfn.records import Position

from .test_leases import StoreFactory, dynamodb_endpoint, workers

__all__ = ["dynamodb_endpoint", "workers"]


def config_of(factory: StoreFactory) -> DynamoDBCheckpointStoreConfig:
    return DynamoDBCheckpointStoreConfig(table=factory.table, endpoint_url=factory.endpoint, failover_time=0.6)


async def holding(store: DynamoDBCheckpointStore, shard: str, position: int) -> None:
    await store.table.create(shard, ())
    lease = await store.table.get(shard)
    assert lease is not None and await store.take(lease) is not None
    await store.save(shard, Checkpoint(position=Position(position)))
    await store.flush()


async def test_show_lists_every_lease_with_its_checkpoint(workers: StoreFactory) -> None:
    store = await workers("w1")
    await holding(store, "s1", 42)
    await store.table.create("s2", ("s1",))
    rows = await show_checkpoints(config_of(workers), "pipe")
    assert [(r.shard_id, r.owner, r.checkpoint, r.parent_ids) for r in rows] == [
        ("s1", "w1", "42", ()), ("s2", None, "TRIM_HORIZON", ("s1",))]
    text = render(rows)
    assert "s1" in text and "42" in text and "w1" in text


async def test_reset_refuses_while_a_worker_renews_unless_forced(workers: StoreFactory) -> None:
    store = await workers("live", failover=5.0, renew=0.1)
    await holding(store, "s1", 42)
    with pytest.raises(LeasesHeldError):
        await reset_checkpoints(config_of(workers), "pipe", StartingPosition("trim_horizon"))
    assert (await show_checkpoints(config_of(workers), "pipe"))[0].checkpoint == "42"

    reset = await reset_checkpoints(config_of(workers), "pipe", StartingPosition("latest"), force=True)
    assert reset == ["s1"]
    await asyncio.sleep(0.3)  # the holder's next renewal fails: it lost the lease
    assert store.lost.get_nowait() == "s1"
    with pytest.raises(LeaseLostError):
        await store.save("s1", Checkpoint(position=Position(50)))
    (row,) = await show_checkpoints(config_of(workers), "pipe")
    assert row.owner is None and row.checkpoint == "LATEST" and row.reset_to == "latest"


async def test_reset_goes_ahead_when_the_holder_died(workers: StoreFactory) -> None:
    dead = await workers("dead", failover=5.0, renew=0.1)
    await holding(dead, "s1", 42)
    await dead.close()  # no release: the lease stays owned, its counter stops moving
    at = 1_700_000_000.25
    assert await reset_checkpoints(config_of(workers), "pipe", StartingPosition("at_timestamp", at)) == ["s1"]
    taker = await workers("taker")
    lease = await taker.table.get("s1")
    assert lease is not None and lease.owner is None
    assert await taker.take(lease) is not None
    assert await taker.load("s1") is None
    assert taker.starting_position("s1") == StartingPosition("at_timestamp", at)
    await taker.save("s1", Checkpoint(position=Position(7)))
    await taker.flush()
    (row,) = await show_checkpoints(config_of(workers), "pipe")
    assert row.checkpoint == "7" and row.reset_to is None  # real progress uses the reset up


async def test_set_moves_one_checkpoint(workers: StoreFactory) -> None:
    store = await workers("w1")
    await holding(store, "s1", 42)
    await store.release("s1")
    await set_checkpoint(config_of(workers), "pipe", "s1", 10**50, 3)
    assert await store.load("s1") == Checkpoint(position=Position(10**50, 3))
    with pytest.raises(Exception, match="no lease"):
        await set_checkpoint(config_of(workers), "pipe", "nope", 1)
