"""The Kafka source end to end on a real broker: order per partition, commits after the sink, restarts,
and a failing partition that neither stalls the others nor gets the member kicked from its group."""

from __future__ import annotations

import asyncio
import base64
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest

from streamfn.config import LoadedPipeline
from streamfn.connectors.kafka.source import KafkaSource
from streamfn.connectors.local.sink import LocalSink
from streamfn.engine.daemon import run_pipelines
from streamfn.engine.pipeline import Pipeline
from streamfn.protocols.sink import SinkBatch
from tests.integration import kafka_util
from tests.integration.kafka_util import (
    committed_offsets,
    create_topic,
    kafka_pipeline,
    numbered,
    produce,
    sink_lines,
    unique,
    wait_for,
)

PARTITIONS = 4


@pytest.fixture(autouse=True)
def _fresh_handler_state() -> None:
    kafka_util.SEEN.clear()
    kafka_util.FAIL_UNTIL.clear()
    kafka_util.FAILED_CALLS.clear()
    kafka_util.EVENTS.clear()


async def drain(loaded: LoadedPipeline, seconds: float = 60.0) -> None:
    """Run the pipeline until every assigned partition is caught up, then stop it gracefully."""
    async with asyncio.timeout(seconds):
        await run_pipelines([loaded], until_caught_up=True, handle_signals=False)


def offsets_by_shard(items: list[dict[str, Any]]) -> dict[str, list[int]]:
    found: dict[str, list[int]] = defaultdict(list)
    for item in items:
        found[item["s"]].append(item["o"])
    return found


async def test_each_partition_is_handled_in_order_and_committed(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = await create_topic(kafka_bootstrap, PARTITIONS)
    await produce(kafka_bootstrap, topic, numbered(PARTITIONS, 120))
    group = unique("g")

    await drain(kafka_pipeline(tmp_path, kafka_bootstrap, topic, group, "tests.integration.kafka_util:record_order"))

    seen: dict[str, list[int]] = defaultdict(list)
    for shard, offset in kafka_util.SEEN:
        seen[shard].append(offset)
    assert sorted(seen) == [f"{topic}-{p}" for p in range(PARTITIONS)]
    for offsets in seen.values():
        assert offsets == list(range(120))  # each partition whole and in order
    items = sink_lines(tmp_path / "out")
    assert all(item["d"]["p"] == int(item["s"].rpartition("-")[2]) for item in items)
    assert await committed_offsets(kafka_bootstrap, group, topic, PARTITIONS) == dict.fromkeys(range(PARTITIONS), 120)


async def test_an_unmodified_lambda_kafka_handler_gets_lambdas_event(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = await create_topic(kafka_bootstrap, 2)
    await produce(kafka_bootstrap, topic, [(1, b"key-1", b'{"n": 1}'), (1, None, b'{"n": 2}')],
                  headers=[("trace", b"\x01\x02")])
    handler = "tests.integration.kafka_util:lambda_handler"
    loaded = kafka_pipeline(tmp_path, kafka_bootstrap, topic, unique("g"), handler)
    loaded = msgspec.structs.replace(loaded, config=msgspec.structs.replace(loaded.config, interface="lambda"))
    await drain(loaded)

    (event,) = kafka_util.EVENTS
    # no cluster_arn: a self-managed cluster, as Lambda names it
    assert event["eventSource"] == "SelfManagedKafka" and event["bootstrapServers"] == kafka_bootstrap
    assert "eventSourceArn" not in event
    (first, second) = event["records"][f"{topic}-1"]
    assert (first["topic"], first["partition"], first["offset"]) == (topic, 1, 0)
    assert base64.b64decode(first["key"]) == b"key-1" and "key" not in second
    assert base64.b64decode(second["value"]) == b'{"n": 2}'
    assert first["headers"] == [{"trace": [1, 2]}] and first["timestampType"] == "CREATE_TIME"
    assert sorted(item["offset"] for item in sink_lines(tmp_path / "out")) == [0, 1]


class GatedSink(LocalSink):
    """A local sink whose writes for one partition wait until the test opens the gate."""

    gate: ClassVar[asyncio.Event]
    held: ClassVar[asyncio.Event]
    shard: ClassVar[str]

    async def write(self, batch: SinkBatch) -> None:
        if batch.shard_id == self.shard and not self.gate.is_set():
            self.held.set()
            await self.gate.wait()
        await super().write(batch)


class GatedSinkConfig:
    """Stands in for a sink's config: the pipeline only calls ``build``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def build(self, ctx: Any) -> LocalSink:
        return GatedSink(ctx.resolve(self.path))


async def test_offsets_are_committed_only_after_the_sink_acknowledged(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = await create_topic(kafka_bootstrap, PARTITIONS)
    await produce(kafka_bootstrap, topic, numbered(PARTITIONS, 30))
    group = unique("g")
    GatedSink.gate, GatedSink.held, GatedSink.shard = asyncio.Event(), asyncio.Event(), f"{topic}-0"
    loaded = kafka_pipeline(tmp_path, kafka_bootstrap, topic, group, "tests.integration.kafka_util:record_order",
                            max_records=10)
    loaded.config.sinks[0] = GatedSinkConfig(str(tmp_path / "out"))  # type: ignore[call-overload]
    stop = asyncio.Event()
    run = asyncio.create_task(run_pipelines([loaded], stop=stop, handle_signals=False))
    try:
        await asyncio.wait_for(GatedSink.held.wait(), 30)
        # The other partitions finish and commit; partition 0's first batch is handled but not yet written.
        async def others_committed() -> bool:
            found = await committed_offsets(kafka_bootstrap, group, topic, PARTITIONS)
            return all(found[p] == 30 for p in range(1, PARTITIONS))
        deadline = time.monotonic() + 20
        while not await others_committed():
            assert time.monotonic() < deadline, "the other partitions never committed"
            await asyncio.sleep(0.2)
        # At most the held batch's first offset is committed (with the batch as pending, before the write).
        assert (await committed_offsets(kafka_bootstrap, group, topic, PARTITIONS))[0] in (None, 0)
        GatedSink.gate.set()
        deadline = time.monotonic() + 20
        while (await committed_offsets(kafka_bootstrap, group, topic, PARTITIONS))[0] != 30:
            assert time.monotonic() < deadline, "partition 0 never committed after its sink write"
            await asyncio.sleep(0.2)
    finally:
        GatedSink.gate.set()
        stop.set()
        await asyncio.wait_for(run, 30)


async def test_a_restart_resumes_from_the_committed_offsets(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = await create_topic(kafka_bootstrap, PARTITIONS)
    group = unique("g")
    await produce(kafka_bootstrap, topic, numbered(PARTITIONS, 75))
    loaded = kafka_pipeline(tmp_path, kafka_bootstrap, topic, group, "tests.integration.kafka_util:record_order",
                            max_records=20)
    await drain(loaded)
    objects_before = {p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*.ndjson")}
    await produce(kafka_bootstrap, topic, numbered(PARTITIONS, 50, start=75))
    await drain(loaded)

    items = sink_lines(tmp_path / "out")
    found = offsets_by_shard(items)
    for p in range(PARTITIONS):
        assert sorted(found[f"{topic}-{p}"]) == list(range(125))  # nothing lost, nothing written twice
    assert [n for shard, n in kafka_util.SEEN if shard == f"{topic}-0"] == list(range(125))  # none handled twice
    objects_after = {p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*.ndjson")}
    assert objects_before < objects_after
    assert await committed_offsets(kafka_bootstrap, group, topic, PARTITIONS) == dict.fromkeys(range(PARTITIONS), 125)


@pytest.mark.parametrize("fail_seconds", [pytest.param(12.0, id="12s"),
                                          pytest.param(30.0, id="30s", marks=pytest.mark.slow)])
async def test_a_failing_partition_stalls_neither_the_others_nor_the_group(
    kafka_bootstrap: str, tmp_path: Path, fail_seconds: float
) -> None:
    topic = await create_topic(kafka_bootstrap, PARTITIONS)
    group = unique("g")
    await produce(kafka_bootstrap, topic, numbered(PARTITIONS, 200))
    # A member that stopped polling would leave the group after max_poll_interval_ms: well inside the failure.
    loaded = kafka_pipeline(tmp_path, kafka_bootstrap, topic, group, "tests.integration.kafka_util:fail_for_a_while",
                            max_records=20, max_poll_interval_ms=4_000, queue_max_records=40)
    kafka_util.FAIL_UNTIL[0] = float("inf")
    stop = asyncio.Event()
    pipeline = Pipeline(loaded)
    await pipeline.open()
    run = asyncio.create_task(pipeline.run(stop))
    try:
        def others_done() -> bool:
            done = {shard for shard, offset in kafka_util.SEEN if offset == 199}
            return done >= {f"{topic}-{p}" for p in range(1, PARTITIONS)}

        await wait_for(others_done, 30, "the healthy partitions to be handled")
        kafka_util.FAIL_UNTIL[0] = time.monotonic() + fail_seconds
        source = pipeline.source
        assert isinstance(source, KafkaSource)
        tp0, consumer = source.topic_partition(f"{topic}-0"), source.consumer
        # While it retries, the failing partition is paused (its feed filled) and nothing of it is handled.
        await wait_for(lambda: tp0 in consumer.paused(), 10, "the failing partition to be paused")
        generation = consumer._coordinator.generation
        await asyncio.sleep(fail_seconds - 1)
        assert not any(shard == f"{topic}-0" for shard, _ in kafka_util.SEEN)
        assert kafka_util.FAILED_CALLS[0] >= 3
        await wait_for(lambda: any(s == f"{topic}-0" and o == 199 for s, o in kafka_util.SEEN), 30,
                       "the failing partition to recover")
        assert pipeline.assigner.rebalances == 0  # type: ignore[attr-defined]
        assert consumer._coordinator.generation == generation
        assert tp0 not in consumer.paused()
        assert [o for s, o in kafka_util.SEEN if s == f"{topic}-0"] == list(range(200))
    finally:
        stop.set()
        await asyncio.wait_for(run, 30)
        await pipeline.shutdown()
