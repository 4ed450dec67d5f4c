"""Smoke tests: each test server works through the real client; the throttle proxy injects exactly N faults."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import ClientError

from tests import servers
from tests.throttle_proxy import THROTTLE, ThrottleProxy

NO_RETRIES = Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"})


@pytest.fixture
async def clients(aws_env: dict[str, str]) -> AsyncIterator[Any]:
    """A factory for aiobotocore clients with fake credentials and no retries."""
    session = get_session()

    def make(service: str, endpoint: str) -> Any:
        return session.create_client(service, endpoint_url=endpoint, region_name="us-east-1", config=NO_RETRIES)

    yield make


async def put_and_get_one_record(kinesis: Any) -> None:
    stream = f"smoke-{uuid.uuid4().hex[:8]}"
    await kinesis.create_stream(StreamName=stream, ShardCount=1)
    await kinesis.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 0.05, "MaxAttempts": 200})
    put = await kinesis.put_record(StreamName=stream, Data=b"hello", PartitionKey="k")
    iterator = (
        await kinesis.get_shard_iterator(StreamName=stream, ShardId=put["ShardId"], ShardIteratorType="TRIM_HORIZON")
    )["ShardIterator"]
    got = await kinesis.get_records(ShardIterator=iterator)
    assert [(r["Data"], r["PartitionKey"]) for r in got["Records"]] == [(b"hello", "k")]
    assert int(got["Records"][0]["SequenceNumber"]) == int(put["SequenceNumber"])


async def test_kinesis_mock_put_get(clients: Any, kinesis_endpoint: str) -> None:
    async with clients("kinesis", kinesis_endpoint) as kinesis:
        await put_and_get_one_record(kinesis)


async def test_kinesalite_put_get(clients: Any, kinesalite_endpoint: str) -> None:
    async with clients("kinesis", kinesalite_endpoint) as kinesis:
        await put_and_get_one_record(kinesis)


async def test_moto_s3_and_dynamodb(clients: Any, moto_endpoint: str) -> None:
    bucket, table = f"smoke-{uuid.uuid4().hex[:8]}", f"smoke-{uuid.uuid4().hex[:8]}"
    async with clients("s3", moto_endpoint) as s3, clients("dynamodb", moto_endpoint) as ddb:
        await s3.create_bucket(Bucket=bucket)
        await s3.put_object(Bucket=bucket, Key="a/b.json", Body=b'{"x": 1}')
        obj = await s3.get_object(Bucket=bucket, Key="a/b.json")
        async with obj["Body"] as body:
            assert await body.read() == b'{"x": 1}'

        await ddb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )
        await ddb.put_item(TableName=table, Item={"pk": {"S": "one"}, "n": {"N": "1"}})
        item = await ddb.get_item(TableName=table, Key={"pk": {"S": "one"}}, ConsistentRead=True)
        assert item["Item"] == {"pk": {"S": "one"}, "n": {"N": "1"}}


async def test_moto_reset_clears_state(clients: Any) -> None:
    handle = servers.start_moto()  # a private server: resetting the shared one would hurt other tests
    try:
        async with clients("s3", handle.endpoint) as s3:
            await s3.create_bucket(Bucket="before-reset")
            servers.reset_moto(handle.endpoint)
            assert (await s3.list_buckets())["Buckets"] == []
    finally:
        handle.stop()
    assert handle.proc.returncode is not None


async def test_tansu_produce_consume(kafka_bootstrap: str) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, b"hello", key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        message = await asyncio.wait_for(consumer.getone(), timeout=30)
    finally:
        await consumer.stop()
    assert (message.key, message.value, message.partition, message.offset) == (
        b"k",
        b"hello",
        sent.partition,
        sent.offset,
    )


async def test_throttle_proxy_injects_exactly_n(clients: Any, kinesalite_endpoint: str) -> None:
    async with ThrottleProxy(kinesalite_endpoint) as proxy, clients("kinesis", proxy.endpoint) as kinesis:
        stream = f"smoke-{uuid.uuid4().hex[:8]}"
        await kinesis.create_stream(StreamName=stream, ShardCount=1)
        await kinesis.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 0.05})
        await kinesis.put_record(StreamName=stream, Data=b"x", PartitionKey="k")
        shards = (await kinesis.list_shards(StreamName=stream))["Shards"]
        iterator = (
            await kinesis.get_shard_iterator(
                StreamName=stream, ShardId=shards[0]["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )
        )["ShardIterator"]

        target = "Kinesis_20131202.GetRecords"
        proxy.inject(target, count=3)
        proxy.inject(target, count=1, status=503)
        errors = []
        for _ in range(4):
            with pytest.raises(ClientError) as caught:
                await kinesis.get_records(ShardIterator=iterator)
            errors.append(
                (caught.value.response["ResponseMetadata"]["HTTPStatusCode"], caught.value.response["Error"]["Code"])
            )
        got = await kinesis.get_records(ShardIterator=iterator)

    assert errors == [(400, THROTTLE)] * 3 + [(503, "ServiceUnavailable")]
    assert [r["Data"] for r in got["Records"]] == [b"x"]
    assert proxy.injected == {target: 4}
    assert proxy.passed[target] == 1
    assert proxy.pending() == 0


def test_command_line_start_stop(tmp_path: Path) -> None:
    """`python -m tests.servers start/stop` leaves endpoints in the env file and no process behind."""
    env_file = tmp_path / "servers.env"
    run = [sys.executable, "-m", "tests.servers"]
    subprocess.run([*run, "start", "--env-file", str(env_file), "--only", "moto"], check=True, timeout=60)
    try:
        line = env_file.read_text().strip()
        assert line.startswith(f"{servers.ENV_VARS['moto']}=http://127.0.0.1:")
        pid = json.loads((tmp_path / "servers.env.pids").read_text())[0][1]
        assert servers.group_pids(pid)
    finally:
        subprocess.run([*run, "stop", "--env-file", str(env_file)], check=True, timeout=60)
    assert not servers.group_pids(pid)
    assert not (tmp_path / "servers.env.pids").exists()


def test_refuses_a_busy_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(servers.ServerStartError, match="busy"):
            servers.start_kinesalite(port=port)


def test_missing_npm_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(servers, "NODE_MODULES", tmp_path)
    with pytest.raises(servers.ServerNotInstalledError, match=r"\.ci/install\.sh"):
        servers.start_kinesis_mock()


async def test_throttle_proxy_dynamodb_batch_write(clients: Any, moto_endpoint: str) -> None:
    table = f"smoke-{uuid.uuid4().hex[:8]}"
    target = "DynamoDB_20120810.BatchWriteItem"
    async with ThrottleProxy(moto_endpoint) as proxy, clients("dynamodb", proxy.endpoint) as ddb:
        await ddb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        proxy.inject(target, count=2)
        proxy.inject(target, count=1, status=500)
        request = {table: [{"PutRequest": {"Item": {"pk": {"S": "a"}}}}]}
        codes = []
        for _ in range(3):
            with pytest.raises(ClientError) as caught:
                await ddb.batch_write_item(RequestItems=request)
            codes.append(caught.value.response["Error"]["Code"])
        await ddb.batch_write_item(RequestItems=request)
        item = await ddb.get_item(TableName=table, Key={"pk": {"S": "a"}}, ConsistentRead=True)
    assert codes == [THROTTLE, THROTTLE, "InternalServerError"]
    assert item["Item"] == {"pk": {"S": "a"}}
    assert proxy.injected == {target: 3}
    assert proxy.passed[target] == 1


@pytest.mark.parametrize(
    "start", [servers.start_kinesis_mock, servers.start_kinesalite, servers.start_moto, servers.start_tansu]
)
def test_servers_listen_on_loopback_only(start: Any) -> None:
    """kinesis-mock binds 0.0.0.0 on its own (plain and TLS ports); the loopback.js preload must pin it."""
    handle = start()
    try:
        listeners = servers.listening_addresses(handle.pid)
    finally:
        handle.stop()
    assert (servers.HOST, handle.port) in listeners
    assert {address for address, _port in listeners} == {servers.HOST}
