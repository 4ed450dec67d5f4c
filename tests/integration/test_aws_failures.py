"""AWS sinks and the lease table on moto when the endpoint hangs, refuses, throttles or says no.

A hung endpoint must fail a call within its request timeout (connect, ``100 Continue`` and read
included), and every failure must arrive classified: RetryableError with the kind metrics count
it under, or the caller's final error (SinkError, CheckpointError).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from streamfn.components import BuildContext
from streamfn.connectors.dynamodb.sink import DynamoDBSink, DynamoDBSinkConfig
from streamfn.connectors.lease_table.table import LeaseTable
from streamfn.connectors.s3.sink import S3Sink, S3SinkConfig
from streamfn.errors import CheckpointError, RetryableError, SinkError
from streamfn.protocols.sink import SinkBatch
from streamfn.records import Position
from tests.integration.aws_support import client, unique
from tests.outage_proxy import OutageProxy
from tests.throttle_proxy import ANY, ThrottleProxy

CTX = BuildContext(pipeline="p", config_dir=Path("."), state_dir=Path("."))
TIMEOUT = 2.0


def batch(items: list[Any], first: int = 1, last: int = 2) -> SinkBatch:
    return SinkBatch(pipeline="p", stream="s", shard_id="shard-0", first=Position(first), last=Position(last),
                     first_arrival=1_700_000_000.0, items=items)


@pytest.fixture
async def proxy(moto_endpoint: str, aws_env: dict[str, str]) -> AsyncIterator[OutageProxy]:
    async with OutageProxy(moto_endpoint) as outage:
        yield outage


async def s3_sink(endpoint: str) -> S3Sink:
    sink = S3SinkConfig(bucket=unique("outage"), endpoint_url=endpoint, create_bucket=True,
                        request_timeout=TIMEOUT).build(CTX)
    await sink.open()
    return sink


async def dynamodb_table(endpoint: str) -> str:
    table = unique("items")
    async with client("dynamodb", endpoint) as ddb:
        await ddb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                               AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                               KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])
    return table


async def dynamodb_sink(endpoint: str, table: str) -> DynamoDBSink:
    sink = DynamoDBSinkConfig(table=table, endpoint_url=endpoint, request_timeout=TIMEOUT).build(CTX)
    await sink.open()
    return sink


async def failure_of(write: Any) -> tuple[BaseException, float]:
    started = time.monotonic()
    with pytest.raises(RetryableError) as caught:
        await write()
    return caught.value, time.monotonic() - started


async def test_a_hung_s3_endpoint_fails_a_write_within_its_request_timeout(proxy: OutageProxy) -> None:
    sink = await s3_sink(proxy.endpoint)
    sent_headers: list[dict[str, str]] = []
    sink.aws.client.meta.events.register("before-send.s3", lambda request, **_: sent_headers.append(
        dict(request.headers)))
    try:
        await sink.write(batch([{"n": 1}]))
        proxy.hang()
        error, took = await failure_of(lambda: sink.write(batch([{"n": 2}], 3, 4)))
        assert error.kind == "timeout" and TIMEOUT - 0.1 <= took <= TIMEOUT + 1.0, (error, took)
        await proxy.refuse()
        error, took = await failure_of(lambda: sink.write(batch([{"n": 2}], 3, 4)))
        assert error.kind == "connection" and took < 1.0, (error, took)
        await proxy.restore()
        await sink.write(batch([{"n": 2}], 3, 4))
    finally:
        await sink.close()
    assert sent_headers and all("Expect" not in headers for headers in sent_headers)
    async with client("s3", proxy.endpoint) as s3:
        listing = await s3.list_objects_v2(Bucket=sink.config.bucket)
    assert sorted(entry["Key"] for entry in listing["Contents"]) == [sink.key_for(batch([])),
                                                                     sink.key_for(batch([], 3, 4))]


async def test_a_hung_dynamodb_endpoint_fails_a_write_within_its_request_timeout(proxy: OutageProxy) -> None:
    table = await dynamodb_table(proxy.endpoint)
    sink = await dynamodb_sink(proxy.endpoint, table)
    try:
        proxy.hang()
        error, took = await failure_of(lambda: sink.write(batch([{"id": "a"}])))
        assert error.kind == "timeout" and TIMEOUT - 0.1 <= took <= TIMEOUT + 1.0, (error, took)
        await proxy.refuse()
        error, took = await failure_of(lambda: sink.write(batch([{"id": "a"}])))
        assert error.kind == "connection" and took < 1.0, (error, took)
        await proxy.restore()
        await sink.write(batch([{"id": "a"}, {"id": "b"}]))
    finally:
        await sink.close()
    async with client("dynamodb", proxy.endpoint) as ddb:
        assert (await ddb.scan(TableName=table))["Count"] == 2


async def test_a_hung_lease_table_fails_a_request_within_its_timeout(proxy: OutageProxy) -> None:
    leases = LeaseTable(unique("leases"), prefix="p:", endpoint_url=proxy.endpoint, request_timeout=TIMEOUT)
    await leases.open()
    try:
        await leases.ensure_table(create=True)
        assert await leases.create("shard-0", ())
        proxy.hang()
        error, took = await failure_of(lambda: leases.get("shard-0"))
        assert error.kind == "timeout" and took <= TIMEOUT + 1.0, (error, took)
        await proxy.restore()
        lease = await leases.get("shard-0")
        assert lease is not None and lease.shard_id == "shard-0"
    finally:
        await leases.close()


async def test_a_missing_lease_table_is_a_checkpoint_error(moto_endpoint: str, aws_env: dict[str, str]) -> None:
    leases = LeaseTable(unique("absent"), prefix="p:", endpoint_url=moto_endpoint)
    await leases.open()
    try:
        with pytest.raises(CheckpointError, match="does not exist and create_table is off"):
            await leases.ensure_table(create=False)
    finally:
        await leases.close()


async def test_throttling_and_5xx_answers_are_retryable_with_their_kind(moto_endpoint: str,
                                                                        aws_env: dict[str, str]) -> None:
    async with ThrottleProxy(moto_endpoint) as throttler:
        s3 = await s3_sink(throttler.endpoint)
        table = await dynamodb_table(throttler.endpoint)
        ddb = await dynamodb_sink(throttler.endpoint, table)
        try:
            throttler.inject(ANY, 1, status=503, error_type="SlowDown")
            assert (await failure_of(lambda: s3.write(batch([{"n": 1}]))))[0].kind == "throttled"
            throttler.inject(ANY, 1, status=500, error_type="InternalError")
            assert (await failure_of(lambda: s3.write(batch([{"n": 1}]))))[0].kind == "server"
            throttler.inject("DynamoDB_20120810.BatchWriteItem", 1)
            assert (await failure_of(lambda: ddb.write(batch([{"id": "a"}]))))[0].kind == "throttled"
            throttler.inject("DynamoDB_20120810.BatchWriteItem", 1, status=500)
            assert (await failure_of(lambda: ddb.write(batch([{"id": "a"}]))))[0].kind == "server"
            await s3.write(batch([{"n": 1}]))
            await ddb.write(batch([{"id": "a"}]))
        finally:
            await s3.close()
            await ddb.close()
        assert throttler.pending() == 0


async def test_output_the_sinks_cannot_take_is_a_sink_error(moto_endpoint: str, aws_env: dict[str, str]) -> None:
    s3 = await s3_sink(moto_endpoint)
    table = await dynamodb_table(moto_endpoint)
    ddb = await dynamodb_sink(moto_endpoint, table)
    try:
        with pytest.raises(SinkError, match="cannot be written as JSON"):
            await s3.write(batch([{"amount": Decimal("9.99")}]))
        with pytest.raises(SinkError, match="cannot be stored in DynamoDB"):
            await ddb.write(batch([{"id": "a", "amount": float("nan")}]))
        with pytest.raises(SinkError, match="ValidationException"):  # an empty key: the server says no
            await ddb.write(batch([{"id": ""}]))
        await ddb.write(batch([{"id": "a", "f": 0.25, "d": Decimal("1.50")}]))
    finally:
        await s3.close()
        await ddb.close()
    missing = S3SinkConfig(bucket=unique("absent"), endpoint_url=moto_endpoint).build(CTX)
    await missing.open()
    try:
        with pytest.raises(SinkError, match="NoSuchBucket"):
            await missing.write(batch([{"n": 1}]))
    finally:
        await missing.close()
    async with client("s3", moto_endpoint) as s3_client:
        assert (await s3_client.list_objects_v2(Bucket=s3.config.bucket)).get("KeyCount", 0) == 0
    async with client("dynamodb", moto_endpoint) as ddb_client:
        items = (await ddb_client.scan(TableName=table))["Items"]
    assert [(item["id"], item["f"], Decimal(item["d"]["N"])) for item in items] == [
        ({"S": "a"}, {"N": "0.25"}, Decimal("1.5"))]
