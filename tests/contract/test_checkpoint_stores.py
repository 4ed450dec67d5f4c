"""The contract every CheckpointStore keeps (see streamfn/protocols/checkpoint.py).

Each store is exercised through two instances over the same durable state: what one
instance flushed (or recorded as pending) the other must load.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from streamfn import Position
from streamfn.components import BuildContext
from streamfn.connectors.lease_table.store import DynamoDBCheckpointStoreConfig
from streamfn.connectors.local.store import LocalCheckpointStore
from streamfn.protocols.checkpoint import Checkpoint, CheckpointStore

StoreFactory = Callable[[], Awaitable[CheckpointStore]]


SHARDS = ("s1", "s2", "s3")


@pytest.fixture(params=["local", "dynamodb"])
async def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opens stores of one kind over the same durable state. The Kafka store is covered by
    tests/integration/test_kafka_checkpoints.py: it commits only for partitions its group assigned."""
    opened: list[CheckpointStore] = []
    table = f"contract-{uuid.uuid4().hex[:8]}"

    async def make() -> CheckpointStore:
        store: CheckpointStore
        if request.param == "local":
            store = LocalCheckpointStore(tmp_path / "cp.sqlite3", "pipeline-a")
            await store.open()
        else:
            endpoint = request.getfixturevalue("moto_endpoint")
            request.getfixturevalue("aws_env")
            config = DynamoDBCheckpointStoreConfig(table=table, endpoint_url=endpoint, failover_time=2.0)
            lease_store = config.build(BuildContext(pipeline="pipeline-a", config_dir=tmp_path, state_dir=tmp_path))
            await lease_store.open()
            if not opened:  # the first instance is the worker holding the leases; later ones read
                for shard in SHARDS:
                    assert await lease_store.acquire(shard)
            store = lease_store
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


async def test_unknown_shard_has_no_checkpoint(new_store: StoreFactory) -> None:
    store = await new_store()
    assert await store.load("shard-x") is None


async def test_flushed_checkpoint_survives_a_new_instance(new_store: StoreFactory) -> None:
    first = await new_store()
    await first.save("s1", Checkpoint(position=Position(5)))
    await first.save("s1", Checkpoint(position=Position(9, 2), window_state=b"w"))
    await first.save("s2", Checkpoint(position=Position(3), shard_end=True))
    kinesis_sized = 49590338271490256608559692538361571095921575989136588898  # far beyond 64 bits
    await first.save("s3", Checkpoint(position=Position(kinesis_sized, 1)))
    await first.flush()
    second = await new_store()
    loaded = await second.load("s1")
    assert loaded is not None and loaded.position == Position(9, 2) and loaded.window_state == b"w"
    ended = await second.load("s2")
    assert ended is not None and ended.shard_end
    big = await second.load("s3")
    assert big is not None and big.position == Position(kinesis_sized, 1)


async def test_pending_bounds_are_durable_at_once_and_pruned_by_progress(new_store: StoreFactory) -> None:
    first = await new_store()
    await first.save("s1", Checkpoint(position=Position(10)))
    await first.record_pending("s1", Position(11), Position(20))
    await first.record_pending("s1", Position(21), Position(30))
    seen = await (await new_store()).load("s1")
    assert seen is not None
    assert seen.pending == ((Position(11), Position(20)), (Position(21), Position(30)))
    await first.save("s1", Checkpoint(position=Position(20)))
    await first.flush()
    after = await (await new_store()).load("s1")
    assert after is not None and after.position == Position(20)
    assert after.pending == ((Position(21), Position(30)),)
