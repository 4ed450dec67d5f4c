"""A lease lost while a checkpoint write is in flight: the write's failure is retrieved, never
logged by asyncio as "Task exception was never retrieved" (against a real DynamoDB, moto)."""

from __future__ import annotations

import asyncio
import gc
import uuid
from typing import Any

import pytest

from streamfn.connectors.lease_table.store import DynamoDBCheckpointStore, DynamoDBCheckpointStoreConfig
from streamfn.protocols.checkpoint import Checkpoint
from streamfn.records import Position


async def _store(endpoint: str, table: str, worker: str) -> DynamoDBCheckpointStore:
    config = DynamoDBCheckpointStoreConfig(table=table, worker_id=worker, failover_time=10.0, endpoint_url=endpoint)
    store = DynamoDBCheckpointStore(config.settings("pipe"))
    await store.open()
    return store


async def test_a_write_cancelled_mid_flight_after_its_lease_was_stolen_leaves_no_unretrieved_error(
    moto_endpoint: str, aws_env: dict[str, str]
) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    table = f"leases-{uuid.uuid4().hex[:8]}"
    zombie, thief = await _store(moto_endpoint, table, "zombie"), await _store(moto_endpoint, table, "thief")
    try:
        await zombie.table.create("s1", ())
        (lease,) = await zombie.table.scan()
        assert await zombie.take(lease) is not None
        await zombie.save("s1", Checkpoint(position=Position(10)))
        await zombie.flush()
        stolen = await thief.table.get("s1")
        assert stolen is not None and await thief.take(stolen) is not None

        # The shard's lane records a batch's bounds, and is stopped (abandon) while that write is
        # in flight: exactly what a lease-lost watcher does to a shard in the middle of a batch.
        held = zombie.held["s1"]
        lane = asyncio.create_task(zombie.record_pending("s1", Position(11), Position(20)))
        for _ in range(1000):
            if held.writer is not None and not held.writer.done():
                break
            await asyncio.sleep(0)
        writer = held.writer
        assert writer is not None and not writer.done(), "the write never started"
        lane.cancel()
        with pytest.raises(asyncio.CancelledError):
            await lane
        await asyncio.wait([writer])  # waits without looking at its exception
        assert not writer.cancelled()
        assert "s1" not in zombie.held and zombie.lost.get_nowait() == "s1"  # the write found the lease gone
        del writer, held, lane
        gc.collect()
        await asyncio.sleep(0)
    finally:
        await zombie.close()
        await thief.close()
    assert [c.get("message") for c in reported] == []
