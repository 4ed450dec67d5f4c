"""On-failure records in Lambda's shapes, from real pipelines: DynamoDB Streams on moto, Kafka on Tansu,
and the local log.

Lambda writes ``DDBStreamBatchInfo`` for DynamoDB Streams with the stream's real ARN,
``KafkaBatchInfo`` (MSK) or ``SelfManagedKafkaBatchInfo`` for Kafka, the function's ARN, a
``payload`` holding the invocation event for object-store destinations, and ``functionError``
"Unhandled" only when the handler raised (null when its ``batchItemFailures`` answer is malformed).
"""

from __future__ import annotations

import asyncio
import re
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import orjson

from streamfn.config import LoadedPipeline, RetryConfig, load_pipeline
from streamfn.connectors.local.destination import LocalDestinationConfig
from streamfn.connectors.local.log import LocalLog
from streamfn.engine.daemon import run_pipelines
from tests.integration.aws_support import client, run_caught_up, unique
from tests.integration.kafka_util import create_topic, kafka_pipeline, produce
from tests.integration.kafka_util import unique as kafka_unique
from tests.integration.test_dynamodb_streams import changes, create_table

FUNCTION_ARN = "arn:aws:lambda:eu-west-1:123456789012:function:orders-audit"
ISO_TIME = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$"

FAILING = """
def handle(batch, context):
    raise RuntimeError("cannot handle " + str(len(batch)))
"""

MALFORMED = """
def handle(event, context):
    return {"batchItemFailures": [{"id": "not-an-itemIdentifier"}]}
"""


def failure_documents(folder: Path) -> list[dict[str, Any]]:
    return [orjson.loads(path.read_bytes()) for path in sorted(folder.rglob("*.json"))]


def assert_request_and_response(doc: dict[str, Any], *, function_error: str | None) -> None:
    request = doc["requestContext"]
    assert set(request) == {"requestId", "functionArn", "condition", "approximateInvokeCount"}
    assert isinstance(request["requestId"], str) and request["condition"] == "RetryAttemptsExhausted"
    assert request["approximateInvokeCount"] == 1
    assert doc["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST", "functionError": function_error}
    assert doc["version"] == "1.0" and re.match(ISO_TIME, doc["timestamp"])


async def test_dynamodb_streams_failures_carry_ddb_stream_batch_info(
    tmp_path: Path, moto_endpoint: str, aws_env: dict[str, str]
) -> None:
    table = unique("orders")
    async with client("dynamodb", moto_endpoint) as ddb:
        stream_arn = await create_table(ddb, table)
        await changes(ddb, table)
    (tmp_path / "ddb_handler.py").write_text(textwrap.dedent(FAILING))
    config = tmp_path / "pipeline.toml"
    config.write_text(
        f'name = "audit"\nhandler = "ddb_handler:handle"\nfunction_arn = "{FUNCTION_ARN}"\n'
        f'[source]\ntype = "dynamodb_streams"\ntable = "{table}"\nendpoint_url = "{moto_endpoint}"\n'
        "idle_interval = 0.05\nmax_reads_per_second = 20.0\n"
        "[batching]\nmax_records = 10\n[retry]\ninitial_delay = 0.01\nmax_delay = 0.05\nmax_attempts = 0\n"
        '[on_failure]\ntype = "local"\npath = "failures"\n'
    )
    await asyncio.to_thread(run_caught_up, config)
    docs = failure_documents(tmp_path / "failures")
    assert docs and sum(doc["DDBStreamBatchInfo"]["batchSize"] for doc in docs) == 4
    for doc in docs:
        assert_request_and_response(doc, function_error="Unhandled")
        assert doc["requestContext"]["functionArn"] == FUNCTION_ARN
        assert "KinesisBatchInfo" not in doc
        info = doc["DDBStreamBatchInfo"]
        assert set(info) == {"shardId", "startSequenceNumber", "endSequenceNumber", "approximateArrivalOfFirstRecord",
                             "approximateArrivalOfLastRecord", "batchSize", "streamArn"}
        assert info["streamArn"] == stream_arn and stream_arn.startswith("arn:aws:dynamodb:")
        assert isinstance(info["startSequenceNumber"], str) and info["startSequenceNumber"].isdigit()
        assert isinstance(info["batchSize"], int)
        records = doc["payload"]["Records"]
        assert records[0]["dynamodb"]["SequenceNumber"] == info["startSequenceNumber"]
        assert {r["eventSource"] for r in records} == {"aws:dynamodb"}
        assert {r["eventSourceARN"] for r in records} == {stream_arn}


async def kafka_failures(tmp_path: Path, bootstrap: str, **source: Any) -> list[dict[str, Any]]:
    topic = await create_topic(bootstrap, 1)
    await produce(bootstrap, topic, [(0, b"k", b'{"n": 1}'), (0, None, b'{"n": 2}')])
    loaded = kafka_pipeline(tmp_path, bootstrap, topic, kafka_unique("g"), "tests.integration.kafka_util:always_fail",
                            **source)
    config = msgspec.structs.replace(loaded.config, function_arn=FUNCTION_ARN,
                                     retry=RetryConfig(initial_delay=0.01, max_delay=0.05, max_attempts=0),
                                     on_failure=LocalDestinationConfig(path=str(tmp_path / "failures")))
    async with asyncio.timeout(60):
        await run_pipelines([LoadedPipeline(config=config, path=loaded.path)], until_caught_up=True,
                            handle_signals=False)
    docs = failure_documents(tmp_path / "failures")
    assert len(docs) == 1
    key = "KafkaBatchInfo" if "cluster_arn" in source else "SelfManagedKafkaBatchInfo"
    assert list(docs[0][key]["recordsInfo"]) == [f"{topic}-0"]
    return docs


async def test_self_managed_kafka_failures_carry_self_managed_batch_info(kafka_bootstrap: str, tmp_path: Path) -> None:
    (doc,) = await kafka_failures(tmp_path, kafka_bootstrap)
    assert_request_and_response(doc, function_error="Unhandled")
    assert "KinesisBatchInfo" not in doc and "KafkaBatchInfo" not in doc
    info = doc["SelfManagedKafkaBatchInfo"]
    assert set(info) == {"batchSize", "bootstrapServers", "payloadSize", "recordsInfo"}
    assert info["batchSize"] == 2 and info["bootstrapServers"] == kafka_bootstrap
    assert isinstance(info["payloadSize"], int) and info["payloadSize"] > 0
    ((partition, offsets),) = info["recordsInfo"].items()
    assert (offsets["firstRecordOffset"], offsets["lastRecordOffset"]) == ("0", "1")
    assert set(offsets) == {"firstRecordOffset", "lastRecordOffset", "firstRecordTimestamp", "lastRecordTimestamp"}
    assert doc["payload"]["eventSource"] == "SelfManagedKafka" and list(doc["payload"]["records"]) == [partition]


async def test_msk_failures_carry_kafka_batch_info_with_the_cluster_arn(kafka_bootstrap: str, tmp_path: Path) -> None:
    cluster = "arn:aws:kafka:eu-west-1:123456789012:cluster/orders/abcd1234-ef56-7890-abcd-1234567890ab-1"
    (doc,) = await kafka_failures(tmp_path, kafka_bootstrap, cluster_arn=cluster)
    assert_request_and_response(doc, function_error="Unhandled")
    info = doc["KafkaBatchInfo"]
    assert set(info) == {"batchSize", "eventSourceArn", "bootstrapServers", "payloadSize", "recordsInfo"}
    assert info["eventSourceArn"] == cluster and info["batchSize"] == 2
    assert doc["payload"]["eventSource"] == "aws:kafka" and doc["payload"]["eventSourceArn"] == cluster


async def test_a_malformed_batch_item_failures_answer_is_no_function_error(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text(textwrap.dedent(MALFORMED))
    config = tmp_path / "pipeline.toml"
    config.write_text(
        'name = "bad-answer"\nhandler = "bad:handle"\ninterface = "lambda"\nreport_batch_item_failures = true\n'
        '[source]\ntype = "local"\nstream = "orders"\nshards = 1\n'
        "[retry]\ninitial_delay = 0.01\nmax_delay = 0.05\nmax_attempts = 0\n"
        '[on_failure]\ntype = "local"\npath = "failures"\n'
    )
    loaded = load_pipeline(config)
    log = LocalLog(loaded.context.state_dir / "log.sqlite3")
    log.create_stream("orders", 1)
    log.append("orders", [("k", b'{"n": 1}')])
    log.close()
    await asyncio.to_thread(run_caught_up, config)
    (doc,) = failure_documents(tmp_path / "failures")
    assert_request_and_response(doc, function_error=None)
    assert doc["requestContext"]["functionArn"] == "arn:aws:lambda:local:000000000000:function:bad-answer"
    assert doc["KinesisBatchInfo"]["streamArn"] == "arn:aws:kinesis:local:000000000000:stream/orders"
    assert doc["payload"]["Records"][0]["eventSource"] == "aws:kinesis"
