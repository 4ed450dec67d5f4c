"""On-failure destinations against real servers: what a destination stores can be read back whole."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamfn import Record
from streamfn.aws import AwsClient
from streamfn.components import BuildContext
from streamfn.connectors.kafka.destination import KafkaDestinationConfig
from streamfn.connectors.kinesis.destination import KinesisDestination
from streamfn.connectors.local.log import LocalLog
from streamfn.connectors.local.log_destination import LocalLogDestination
from streamfn.connectors.s3.destination import S3Destination
from streamfn.connectors.shared.failure_documents import failure_documents
from streamfn.protocols.destination import FailedBatch


def failure(n: int = 3, size: int = 10) -> FailedBatch:
    records = [Record("shard-0001", 100 + i, f"k{i}", orjson.dumps({"v": i, "pad": "x" * size}), time.time())
               for i in range(n)]
    return FailedBatch(pipeline="p", stream="s", source_kind="kinesis", shard_id="shard-0001",
                       condition="RetryAttemptsExhausted", records=records, invoke_count=3, error="boom",
                       failed_at=time.time())


def values(doc: dict[str, Any]) -> list[int]:
    return [orjson.loads(base64.b64decode(r["data"]))["v"] for r in doc["records"]]


def test_large_failures_are_split_under_the_record_limit() -> None:
    documents = failure_documents(failure(n=40, size=50_000))
    assert len(documents) > 1
    assert all(len(d) < 1024 * 1024 for d in documents)
    docs = [orjson.loads(d) for d in documents]
    assert sum((values(d) for d in docs), []) == list(range(40))
    assert all(d["KinesisBatchInfo"]["shardId"] == "shard-0001" for d in docs)


async def test_local_log_destination(tmp_path: Path) -> None:
    destination = LocalLogDestination(tmp_path / "log.sqlite3", "failures", 1)
    await destination.open()
    await destination.send(failure())
    await destination.close()
    log = LocalLog(tmp_path / "log.sqlite3")
    (record,) = log.read("failures", "shard-0000", 0, 10)
    log.close()
    doc = orjson.loads(record.data)
    assert record.partition_key == "shard-0001"
    assert doc["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert values(doc) == [0, 1, 2]


async def test_s3_destination(moto_endpoint: str, aws_env: dict[str, str]) -> None:
    bucket = f"failures-{uuid.uuid4().hex[:8]}"
    client = AwsClient("s3", endpoint_url=moto_endpoint)
    await client.open()
    try:
        await client.client.create_bucket(Bucket=bucket)
        destination = S3Destination(AwsClient("s3", endpoint_url=moto_endpoint), bucket, "dlq/")
        await destination.open()
        sent = failure()
        await destination.send(sent)
        await destination.send(sent)  # a replay after a crash lands on the same key
        await destination.close()
        listed = await client.client.list_objects_v2(Bucket=bucket)
        (obj,) = listed["Contents"]
        assert obj["Key"].startswith("dlq/aws/lambda/p/shard-0001/")
        body = await (await client.client.get_object(Bucket=bucket, Key=obj["Key"]))["Body"].read()
        doc = orjson.loads(body)
        assert values(doc) == [0, 1, 2]
        assert doc["requestContext"]["approximateInvokeCount"] == 3
    finally:
        await client.close()


async def test_kinesis_destination(kinesis_endpoint: str, aws_env: dict[str, str]) -> None:
    stream = f"failures-{uuid.uuid4().hex[:8]}"
    client = AwsClient("kinesis", endpoint_url=kinesis_endpoint)
    await client.open()
    try:
        await client.client.create_stream(StreamName=stream, ShardCount=1)
        for _ in range(50):
            described = await client.client.describe_stream_summary(StreamName=stream)
            if described["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
                break
            await asyncio.sleep(0.1)
        destination = KinesisDestination(AwsClient("kinesis", endpoint_url=kinesis_endpoint), stream)
        await destination.open()
        await destination.send(failure())
        await destination.close()
        shards = await client.client.list_shards(StreamName=stream)
        shard_id = shards["Shards"][0]["ShardId"]
        answer = await client.client.get_shard_iterator(StreamName=stream, ShardId=shard_id,
                                                        ShardIteratorType="TRIM_HORIZON")
        iterator = answer["ShardIterator"]
        got = await client.client.get_records(ShardIterator=iterator)
        (record,) = got["Records"]
        assert record["PartitionKey"] == "shard-0001"
        assert values(orjson.loads(record["Data"])) == [0, 1, 2]
    finally:
        await client.close()


async def test_kafka_destination(kafka_bootstrap: str) -> None:
    from aiokafka import AIOKafkaConsumer

    topic = f"failures-{uuid.uuid4().hex[:8]}"
    destination = KafkaDestinationConfig(bootstrap_servers=kafka_bootstrap, topic=topic,
                                         client_id="test").build(BuildContext("p", Path(), Path()))
    await destination.open()
    await destination.send(failure())
    await destination.close()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        message = await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()
    assert message.key == b"shard-0001"
    assert values(orjson.loads(message.value)) == [0, 1, 2]


@pytest.mark.parametrize("kind", ["local_log"])
def test_pipeline_refuses_a_limit_without_destination(tmp_path: Path, kind: str) -> None:
    from streamfn.config import load_pipeline
    from streamfn.errors import ConfigError

    path = tmp_path / "p.toml"
    path.write_text("name='p'\nhandler='h:handle'\n[source]\ntype='local'\nstream='s'\n[retry]\nmax_record_age=120\n")
    with pytest.raises(ConfigError, match="on_failure"):
        load_pipeline(path)
    path.write_text(path.read_text() + f"[on_failure]\ntype='{kind}'\nstream='dlq'\n")
    assert load_pipeline(path).config.on_failure is not None
