"""The Kafka checkpoint store's commit-metadata probe on a real broker (Tansu, which drops commit
metadata): refused by default with a message naming what is lost and the setting that accepts it;
accepted, the store runs, warns once and says so; the probe never commits in the pipeline's group."""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec
import pytest

from streamfn.connectors.kafka.metadata_probe import CommitMetadataLost, broker_keeps_commit_metadata, probe_group
from streamfn.connectors.kafka.offsets import KafkaCheckpointStore, KafkaCheckpointStoreConfig
from streamfn.connectors.kafka.source import KafkaSource, KafkaSourceConfig
from streamfn.engine.pipeline import Pipeline
from streamfn.protocols.checkpoint import Checkpoint
from streamfn.records import Position
from tests.integration.kafka_util import committed_offsets, create_topic, kafka_pipeline, unique


async def dropping_broker(bootstrap: str, topic: str) -> None:
    options = KafkaSourceConfig(bootstrap_servers=bootstrap, topic=topic, group_id=unique("g")).consumer_options()
    if await broker_keeps_commit_metadata(options, topic):
        pytest.skip("this broker keeps commit metadata (a real Kafka does); these tests need one that drops it")


async def test_refused_by_default_without_touching_the_group(kafka_bootstrap: str) -> None:
    topic = await create_topic(kafka_bootstrap, 2)
    await dropping_broker(kafka_bootstrap, topic)
    group = unique("g")
    source = KafkaSource(KafkaSourceConfig(bootstrap_servers=kafka_bootstrap, topic=topic, group_id=group))
    await source.open()
    try:
        store = source.checkpoint_store()
        await store.open()  # a reader of checkpoints (status) opens without probing
        assert store.metadata_kept is None
        with pytest.raises(CommitMetadataLost) as refused:
            await store.bind(source)
        message = str(refused.value)
        assert "drops the metadata of offset commits" in message
        assert "duplicates instead of overwrites" in message
        assert 'without_commit_metadata = "accept"' in message
        assert store.metadata_kept is False
        assert store.at_least_once() is None  # it never ran
        await store.close()
    finally:
        await source.close()
    assert await committed_offsets(kafka_bootstrap, group, topic, 2) == {0: None, 1: None}
    assert (await committed_offsets(kafka_bootstrap, probe_group(group), topic, 2))[0] == 0


async def test_accepted_it_runs_warns_once_and_commits(kafka_bootstrap: str, caplog: pytest.LogCaptureFixture) -> None:
    topic = await create_topic(kafka_bootstrap, 1)
    await dropping_broker(kafka_bootstrap, topic)
    group = unique("g")
    source = KafkaSource(KafkaSourceConfig(bootstrap_servers=kafka_bootstrap, topic=topic, group_id=group))
    await source.open()
    shard = f"{topic}-0"
    try:
        source.consumer.assign([source.topic_partition(shard)])
        store = source.checkpoint_store(KafkaCheckpointStoreConfig(without_commit_metadata="accept"))
        with caplog.at_level(logging.WARNING, logger="streamfn.kafka"):
            await store.open()
            await store.bind(source)
            await store.bind(source)  # probed once
        warnings = [r for r in caplog.records if "drops offset commit metadata" in r.getMessage()]
        assert len(warnings) == 1
        assert store.without_metadata is True
        reason = store.at_least_once()
        assert reason is not None and "drops offset commit metadata" in reason and "without_commit_metadata" in reason
        await store.record_pending(shard, Position(0), Position(4))
        await store.save(shard, Checkpoint(position=Position(4)))
        await store.flush()
        await store.close()
    finally:
        await source.close()
    assert await committed_offsets(kafka_bootstrap, group, topic, 1) == {0: 5}


async def test_a_pipeline_refuses_to_open_by_default(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = await create_topic(kafka_bootstrap, 1)
    await dropping_broker(kafka_bootstrap, topic)
    loaded = kafka_pipeline(tmp_path, kafka_bootstrap, topic, unique("g"), "tests.integration.kafka_util:record_order")
    # no [checkpoints] section: the Kafka store with its defaults
    loaded = msgspec.structs.replace(loaded, config=msgspec.structs.replace(loaded.config, checkpoints=None))
    pipeline = Pipeline(loaded)
    try:
        with pytest.raises(CommitMetadataLost, match="without_commit_metadata"):
            await pipeline.open()
    finally:
        await pipeline.store.close()
        await pipeline.source.close()


async def test_a_broker_that_keeps_metadata_runs_by_default_and_keeps_pending_bounds(
        kafka_keeping_metadata: str) -> None:
    topic = await create_topic(kafka_keeping_metadata, 1)
    group = unique("g")
    source = KafkaSource(KafkaSourceConfig(bootstrap_servers=kafka_keeping_metadata, topic=topic, group_id=group))
    await source.open()
    shard = f"{topic}-0"
    try:
        source.consumer.assign([source.topic_partition(shard)])  # by hand: no group join on this broker
        store = source.checkpoint_store()
        await store.open()
        await store.bind(source)  # the default, "refuse", lets it run
        assert store.metadata_kept is True and store.at_least_once() is None
        await store.save(shard, Checkpoint(position=Position(9), window_state=b"\x01\x02"))
        await store.record_pending(shard, Position(10), Position(19))  # durable on return
        other = KafkaCheckpointStore(source)
        assert await other.load(shard) == Checkpoint(position=Position(9), window_state=b"\x01\x02",
                                                     pending=((Position(10), Position(19)),))
        await store.close()
    finally:
        await source.close()
    assert await committed_offsets(kafka_keeping_metadata, group, topic, 1) == {0: 10}
