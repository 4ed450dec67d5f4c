"""SQS and SNS on-failure destinations on moto: a pipeline whose handler fails past max_attempts
sends Lambda-shaped failure records to a queue, and to a topic read through a subscribed queue."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from streamfn import Record
from streamfn.aws import AwsClient
from streamfn.connectors.sqs.destination import SqsDestination, message_bodies
from streamfn.protocols.destination import FailedBatch
from tests.pipelines import append, run_until_caught_up, write_pipeline

HANDLER = """
def handle(batch, context):
    for record in batch:
        if record.json()["v"] == 3:
            raise ValueError("poison record 3")
    return [record.json() for record in batch]
"""


async def _with_sqs(endpoint: str, work: Any) -> Any:
    client = AwsClient("sqs", endpoint_url=endpoint)
    await client.open()
    try:
        return await work(client.client)
    finally:
        await client.close()


async def _drain(sqs: Any, url: str, expect: int) -> list[str]:
    bodies: list[str] = []
    deadline = time.monotonic() + 20
    while len(bodies) < expect and time.monotonic() < deadline:
        answer = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for message in answer.get("Messages", []):
            bodies.append(message["Body"])
            await sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return bodies


def _pipeline(folder: Path, on_failure: str) -> Path:
    extra = f"[on_failure]\n{on_failure}"
    config = write_pipeline(folder, HANDLER, shards=1, extra="", batching="max_records = 5")
    text = config.read_text().replace("max_delay = 0.05\n", "max_delay = 0.05\nmax_attempts = 1\n")
    config.write_text(text + extra)
    append(config, [(f"k{i}", orjson.dumps({"v": i})) for i in range(8)])
    return config


def _check_lambda_shape(doc: dict[str, Any]) -> None:
    assert doc["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert doc["requestContext"]["approximateInvokeCount"] == 2
    assert doc["requestContext"]["functionArn"].endswith(":function:p")
    assert doc["responseContext"]["functionError"] == "Unhandled"
    assert doc["version"] == "1.0"
    info = doc["KinesisBatchInfo"]
    assert (info["shardId"], info["startSequenceNumber"], info["endSequenceNumber"], info["batchSize"]) == (
        "shard-0000", "1", "5", 5)
    assert "poison record 3" in doc["errorMessage"]
    assert [orjson.loads(base64.b64decode(r["data"]))["v"] for r in doc["records"]] == [0, 1, 2, 3, 4]


def test_pipeline_sends_failures_to_an_sqs_queue(tmp_path: Path, moto_endpoint: str,
                                                 aws_env: dict[str, str]) -> None:
    name = f"dlq-{uuid.uuid4().hex[:8]}"

    async def create(sqs: Any) -> tuple[str, str]:
        url = (await sqs.create_queue(QueueName=name))["QueueUrl"]
        arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))["Attributes"]["QueueArn"]
        return url, arn

    url, arn = asyncio.run(_with_sqs(moto_endpoint, create))
    config = _pipeline(tmp_path, f'type = "sqs"\nqueue = "{arn}"\nendpoint_url = "{moto_endpoint}"\n')
    run_until_caught_up(config)

    async def read(sqs: Any) -> list[str]:
        return await _drain(sqs, url, 1)

    (body,) = asyncio.run(_with_sqs(moto_endpoint, read))
    _check_lambda_shape(orjson.loads(body))


def test_pipeline_sends_failures_to_an_sns_topic(tmp_path: Path, moto_endpoint: str,
                                                 aws_env: dict[str, str]) -> None:
    name = f"dlq-{uuid.uuid4().hex[:8]}"

    async def create(sqs: Any) -> tuple[str, str]:
        url = (await sqs.create_queue(QueueName=name))["QueueUrl"]
        queue_arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
                     )["Attributes"]["QueueArn"]
        sns = AwsClient("sns", endpoint_url=moto_endpoint)
        await sns.open()
        try:
            topic = (await sns.client.create_topic(Name=name))["TopicArn"]
            await sns.client.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn,
                                       Attributes={"RawMessageDelivery": "true"})
        finally:
            await sns.close()
        return url, topic

    url, topic = asyncio.run(_with_sqs(moto_endpoint, create))
    config = _pipeline(tmp_path, f'type = "sns"\ntopic_arn = "{topic}"\nendpoint_url = "{moto_endpoint}"\n')
    run_until_caught_up(config)

    async def read(sqs: Any) -> list[str]:
        return await _drain(sqs, url, 1)

    (body,) = asyncio.run(_with_sqs(moto_endpoint, read))
    _check_lambda_shape(orjson.loads(body))


def _failure(n: int, size: int) -> FailedBatch:
    records = [Record("shard-0001", 100 + i, f"k{i}", orjson.dumps({"v": i, "pad": "x" * size}), time.time())
               for i in range(n)]
    return FailedBatch(pipeline="p", stream="s", source_kind="kinesis", shard_id="shard-0001",
                       condition="RetryAttemptsExhausted", records=records, invoke_count=3, error="boom",
                       failed_at=time.time())


def test_metadata_only_is_lambdas_exact_record() -> None:
    (body,) = message_bodies(_failure(3, 10), include_records=False)
    doc = orjson.loads(body)
    assert "records" not in doc
    assert set(doc) == {"requestContext", "responseContext", "version", "timestamp", "KinesisBatchInfo",
                        "errorMessage"}


def test_large_failures_go_to_a_fifo_queue_in_parts_once(moto_endpoint: str, aws_env: dict[str, str]) -> None:
    name = f"dlq-{uuid.uuid4().hex[:8]}.fifo"
    failure = _failure(12, 40_000)

    async def work(sqs: Any) -> list[str]:
        url = (await sqs.create_queue(QueueName=name, Attributes={"FifoQueue": "true"}))["QueueUrl"]
        destination = SqsDestination(AwsClient("sqs", endpoint_url=moto_endpoint), name, True)
        await destination.open()
        await destination.send(failure)
        await destination.send(failure)  # a replay after a crash: FIFO deduplication drops it
        await destination.close()
        parts = len(message_bodies(failure, include_records=True))
        bodies = await _drain(sqs, url, parts)
        late = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        assert not late.get("Messages"), "the replayed send was delivered twice"
        return bodies

    bodies = asyncio.run(_with_sqs(moto_endpoint, work))
    docs = [orjson.loads(b) for b in bodies]
    assert len(docs) > 1 and all(len(b) < 256 * 1024 for b in bodies)
    values = [orjson.loads(base64.b64decode(r["data"]))["v"] for d in docs for r in d["records"]]
    assert values == list(range(12))
