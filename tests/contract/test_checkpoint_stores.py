"""The contract every CheckpointStore keeps (see streamfn/protocols/checkpoint.py).

Each store (streamfn.testing's in-memory one, local SQLite, the DynamoDB lease table on moto,
Kafka's committed offsets on Tansu) is exercised through two instances over the same durable state:
what one instance flushed (or recorded as pending) the other must load.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec
import pytest

from streamfn import Position
from streamfn.components import BuildContext
from streamfn.connectors.kafka.source import KafkaSource, KafkaSourceConfig
from streamfn.connectors.lease_table.store import DynamoDBCheckpointStoreConfig
from streamfn.connectors.local.store import LocalCheckpointStore
from streamfn.errors import LeaseLostError
from streamfn.protocols.checkpoint import Checkpoint, CheckpointStore
from streamfn.testing import MemoryCheckpointStore
from tests.integration.kafka_util import create_topic
from tests.integration.test_kafka_checkpoints import broker_keeps_commit_metadata

StoreFactory = Callable[[], Awaitable[CheckpointStore]]


class Stores(msgspec.Struct, frozen=True):
    """Opens stores of one kind over the same durable state, with the shard ids that store takes.

    ``big_sequences``: positions beyond 64 bits survive (Kinesis-sized); Kafka offsets are int64.
    ``sub_sequences``: a KPL sub-sequence survives; Kafka has no aggregated records.
    ``extras``: pending bounds and window states survive. Kafka keeps them in the commit's metadata
    string, which Tansu drops (a real Kafka keeps it): those checks skip on such a broker.
    """

    make: StoreFactory
    shards: tuple[str, str, str]
    unknown: str
    big_sequences: bool = True
    sub_sequences: bool = True
    extras: bool = True
    #: A shard the first instance does not own (no lease, not assigned); None where stores own every shard.
    unowned: str | None = None


SHARDS = ("s1", "s2", "s3")


#: "kafka" runs on Tansu, which drops commit metadata (the extras are skipped there); "kafka-metadata"
#: on noida-db, which keeps it.
@pytest.fixture(params=["memory", "local", "dynamodb", "kafka", "kafka-metadata"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    """The first instance is the worker that owns the shards (lease holder, assigned partitions);
    later ones only read what it made durable."""
    opened: list[CheckpointStore] = []
    closers: list[Callable[[], Awaitable[None]]] = []
    table = f"contract-{uuid.uuid4().hex[:8]}"
    shards, unknown, extras = SHARDS, "shard-x", True
    kafka = request.param in ("kafka", "kafka-metadata")
    if kafka:
        bootstrap = request.getfixturevalue("kafka_bootstrap" if request.param == "kafka" else "kafka_keeping_metadata")
        topic = await create_topic(bootstrap, 4, prefix="contract")
        group = f"contract-{uuid.uuid4().hex[:8]}"
        shards, unknown = (f"{topic}-0", f"{topic}-1", f"{topic}-2"), f"{topic}-3"
        extras = await broker_keeps_commit_metadata(bootstrap, topic)

    memory = MemoryCheckpointStore()

    async def make() -> CheckpointStore:
        store: CheckpointStore
        if request.param == "memory":  # its state is the object: every instance is that one
            store = memory
        elif request.param == "local":
            store = LocalCheckpointStore(tmp_path / "cp.sqlite3", "pipeline-a")
            await store.open()
        elif request.param == "dynamodb":
            endpoint = request.getfixturevalue("moto_endpoint")
            request.getfixturevalue("aws_env")
            config = DynamoDBCheckpointStoreConfig(table=table, endpoint_url=endpoint, failover_time=2.0)
            lease_store = config.build(BuildContext(pipeline="pipeline-a", config_dir=tmp_path, state_dir=tmp_path))
            await lease_store.open()
            if not opened:
                for shard in SHARDS:
                    assert await lease_store.acquire(shard)
            store = lease_store
        else:
            source = KafkaSource(KafkaSourceConfig(bootstrap_servers=bootstrap, topic=topic, group_id=group))
            await source.open()
            closers.append(source.close)
            if not opened:  # partitions assigned by hand: commits need no group join
                source.consumer.assign([source.topic_partition(shard) for shard in shards])
            store = source.checkpoint_store()
            await store.open()
        opened.append(store)
        return store

    unowned = "s4" if request.param == "dynamodb" else unknown if kafka else None
    yield Stores(make, shards, unknown, big_sequences=not kafka, sub_sequences=not kafka, extras=extras,
                 unowned=unowned)
    for store in opened:
        await store.close()
    for close in closers:
        await close()


async def test_unknown_shard_has_no_checkpoint(stores: Stores) -> None:
    store = await stores.make()
    assert await store.load(stores.unknown) is None


async def test_flushed_checkpoint_survives_a_new_instance(stores: Stores) -> None:
    s1, s2, s3 = stores.shards
    sub = 2 if stores.sub_sequences else 0
    first = await stores.make()
    await first.save(s1, Checkpoint(position=Position(5)))
    await first.save(s1, Checkpoint(position=Position(9, sub), window_state=b"w"))
    await first.save(s2, Checkpoint(position=Position(3), shard_end=True))
    # Kinesis-sized: far beyond 64 bits; a Kafka offset is an int64.
    big_sequence = 49590338271490256608559692538361571095921575989136588898 if stores.big_sequences else 2**62
    await first.save(s3, Checkpoint(position=Position(big_sequence, sub // 2)))
    await first.flush()
    second = await stores.make()
    loaded = await second.load(s1)
    assert loaded is not None and loaded.position == Position(9, sub)
    assert loaded.window_state == (b"w" if stores.extras else None)
    ended = await second.load(s2)
    assert ended is not None and ended.shard_end == stores.extras  # a position at SHARD_END is no contract
    big = await second.load(s3)
    assert big is not None and big.position == Position(big_sequence, sub // 2)


async def test_pending_bounds_are_durable_at_once_and_pruned_by_progress(stores: Stores) -> None:
    if not stores.extras:
        pytest.skip("this broker drops offset commit metadata (Tansu does); a real Kafka keeps it")
    s1 = stores.shards[0]
    first = await stores.make()
    await first.save(s1, Checkpoint(position=Position(10)))
    await first.record_pending(s1, Position(11), Position(20))
    await first.record_pending(s1, Position(21), Position(30))
    seen = await (await stores.make()).load(s1)
    assert seen is not None
    assert seen.pending == ((Position(11), Position(20)), (Position(21), Position(30)))
    await first.save(s1, Checkpoint(position=Position(20)))
    await first.flush()
    after = await (await stores.make()).load(s1)
    assert after is not None and after.position == Position(20)
    assert after.pending == ((Position(21), Position(30)),)


async def test_a_shard_this_worker_does_not_own_is_refused_with_lease_lost(stores: Stores) -> None:
    if stores.unowned is None:
        pytest.skip("this store serves one worker: it owns every shard")
    owner = await stores.make()
    with pytest.raises(LeaseLostError):
        await owner.save(stores.unowned, Checkpoint(position=Position(5)))
        await owner.flush()
    reader = await stores.make()
    assert await reader.load(stores.unowned) is None  # nothing was written for it
