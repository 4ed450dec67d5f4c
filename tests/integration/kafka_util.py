"""Helpers for the Kafka tests: topics, producing, committed offsets, pipelines, handlers.

Everything talks to the broker the ``kafka_bootstrap`` fixture names (Tansu, or the cluster in
``STREAMFN_TEST_KAFKA``). Group settings are short so joins and failovers fit in a test.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from streamfn import Batch, Context
from streamfn.config import BatchingConfig, LoadedPipeline, PipelineConfig, RetryConfig
from streamfn.connectors.kafka.offsets import KafkaCheckpointStoreConfig
from streamfn.connectors.kafka.source import KafkaSourceConfig
from streamfn.connectors.local.sink import LocalSinkConfig

#: Tansu drops offset commit metadata: the tests' pipelines accept that (pending batch bounds are not kept).
ACCEPT_LOST_METADATA = KafkaCheckpointStoreConfig(without_commit_metadata="accept")
#: The same, as lines of a pipeline file.
ACCEPT_LOST_METADATA_TOML = '[checkpoints]\ntype = "kafka"\nwithout_commit_metadata = "accept"\n'

#: Short enough that a dead member is noticed within seconds, long enough for a loaded CI box.
GROUP_SETTINGS: dict[str, Any] = {"session_timeout_ms": 6_000, "heartbeat_interval_ms": 1_000}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def create_topic(bootstrap: str, partitions: int = 4, prefix: str = "t") -> str:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = unique(prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    return topic


async def produce(bootstrap: str, topic: str, records: Iterable[tuple[int, bytes | None, bytes | None]],
                  headers: list[tuple[str, bytes]] | None = None) -> int:
    """Send ``(partition, key, value)`` records (acks=all, not idempotent); returns how many."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    sent = 0
    try:
        futures = []
        for partition, key, value in records:
            futures.append(await producer.send(topic, value, key=key, partition=partition, headers=headers))
            sent += 1
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent


def numbered(partitions: int, per_partition: int, start: int = 0) -> list[tuple[int, bytes, bytes]]:
    """JSON records ``{"p": partition, "n": n}`` with n from ``start``, keyed ``k<n % 7>``."""
    return [
        (p, f"k{n % 7}".encode(), orjson.dumps({"p": p, "n": n}))
        for n in range(start, start + per_partition)
        for p in range(partitions)
    ]


async def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    """The group's committed offset per partition, read by a client that does not join the group."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await consumer.stop()


def kafka_pipeline(folder: Path, bootstrap: str, topic: str, group: str, handler: str, *,
                   max_records: int = 50, retry: RetryConfig | None = None, **source: Any) -> LoadedPipeline:
    """A Kafka pipeline writing to ``folder/out``."""
    config = PipelineConfig(
        name="kafka-test",
        handler=handler,
        source=KafkaSourceConfig(bootstrap_servers=bootstrap, topic=topic, group_id=group,
                                 **{**GROUP_SETTINGS, **source}),
        state_dir=str(folder / "state"),
        batching=BatchingConfig(max_records=max_records),
        retry=retry or RetryConfig(initial_delay=0.05, max_delay=0.5),
        sinks=[LocalSinkConfig(path=str(folder / "out"))],
        checkpoints=ACCEPT_LOST_METADATA,
        shutdown_timeout=10.0,
    )
    return LoadedPipeline(config=config, path=folder / "pipeline.toml")


def sink_lines(out: Path) -> list[dict[str, Any]]:
    """Every item the local sink wrote under ``out``, object by object."""
    items: list[dict[str, Any]] = []
    for path in sorted(out.rglob("*.ndjson")):
        items.extend(orjson.loads(line) for line in path.read_bytes().splitlines() if line)
    return items


async def wait_for(predicate: Any, seconds: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        await asyncio.sleep(interval)


# ---- handlers (referenced as tests.integration.kafka_util:<name>) ------------------------------------------------

#: (shard_id, offset) in the order the handler saw them, across calls in this process.
SEEN: list[tuple[str, int]] = []
#: Partition number -> monotonic time until which the handler fails on that partition.
FAIL_UNTIL: dict[int, float] = {}
#: Partition number -> how many calls failed.
FAILED_CALLS: dict[int, int] = {}


async def record_order(batch: Batch, context: Context) -> list[dict[str, Any]]:
    """Remembers what it saw and emits one item per record (partition, offset, data)."""
    SEEN.extend((r.shard_id, r.sequence) for r in batch)
    return [{"s": r.shard_id, "o": r.sequence, "d": r.json()} for r in batch]


async def fail_for_a_while(batch: Batch, context: Context) -> list[dict[str, Any]]:
    """Fails every call on a partition listed in FAIL_UNTIL until its time has passed."""
    partition = batch.first.attributes["partition"] if batch.first.attributes else -1
    if time.monotonic() < FAIL_UNTIL.get(partition, 0.0):
        FAILED_CALLS[partition] = FAILED_CALLS.get(partition, 0) + 1
        raise RuntimeError(f"partition {partition} is down")
    return await record_order(batch, context)


#: Lambda events the lambda-interface handler received.
EVENTS: list[dict[str, Any]] = []


async def always_fail(batch: Batch, context: Context) -> list[dict[str, Any]]:
    raise RuntimeError(f"cannot handle {len(batch)} records")


def lambda_handler(event: dict[str, Any], context: Any) -> list[dict[str, Any]]:
    """An unmodified Lambda Kafka handler (sync, so it runs in a worker thread)."""
    EVENTS.append(event)
    return [{"offset": r["offset"], "partition": r["partition"]} for rs in event["records"].values() for r in rs]


async def slow_with_pid(batch: Batch, context: Context) -> list[dict[str, Any]]:
    """Takes a little while per batch and says which process handled it (for the failover test)."""
    await asyncio.sleep(0.05)
    pid = os.getpid()
    return [{"s": r.shard_id, "o": r.sequence, "pid": pid} for r in batch]
