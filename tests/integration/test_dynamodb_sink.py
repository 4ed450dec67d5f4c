"""The DynamoDB sink against moto: chunks of 25, duplicate keys, conditional versions, value types."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from streamfn.connectors.dynamodb.dynamodb_json import item_from_dynamodb
from streamfn.connectors.dynamodb.sink import DynamoDBSink, DynamoDBSinkConfig
from streamfn.errors import SinkError
from streamfn.protocols.sink import SinkBatch
from streamfn.records import Position
from tests.integration.aws_support import CTX, client, unique


def batch(items: list[Any]) -> SinkBatch:
    return SinkBatch(pipeline="p", stream="s", shard_id="shard-0", first=Position(1), last=Position(2),
                     first_arrival=0.0, items=items)


async def make_table(endpoint: str) -> str:
    name = unique("t")
    async with client("dynamodb", endpoint) as ddb:
        await ddb.create_table(
            TableName=name, BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        )
    return name


async def scan(endpoint: str, table: str) -> dict[str, dict[str, Any]]:
    async with client("dynamodb", endpoint) as ddb:
        items = (await ddb.scan(TableName=table, ConsistentRead=True))["Items"]
    return {i["id"]["S"]: item_from_dynamodb(i) for i in items}


async def open_sink(endpoint: str, table: str, **options: Any) -> DynamoDBSink:
    sink = DynamoDBSinkConfig(table=table, endpoint_url=endpoint, **options).build(CTX)
    await sink.open()
    return sink


async def test_batches_of_25_with_duplicate_keys_and_all_types(moto_endpoint: str, aws_env: dict[str, str]) -> None:
    table = await make_table(moto_endpoint)
    sink = await open_sink(moto_endpoint, table)
    items: list[Any] = [{"id": f"k{i}", "n": i} for i in range(60)]
    items.append({"id": "k5", "n": 500})  # same key again in the batch: the last one wins
    items.append({"id": "typed", "f": 1.25, "d": Decimal("2.5"), "b": b"\x00\x01", "t": True, "z": None,
                  "l": [1, "a"], "m": {"x": {"y": 2}}, "ss": {"p", "q"}, "ns": {1, 2}})
    try:
        await sink.write(batch(items))
        await sink.write(batch(items))  # a replay: same items, nothing doubles
    finally:
        await sink.close()
    stored = await scan(moto_endpoint, table)
    assert len(stored) == 61
    assert stored["k5"]["n"] == 500 and stored["k59"]["n"] == 59
    assert stored["typed"] == {"id": "typed", "f": 1.25, "d": 2.5, "b": b"\x00\x01", "t": True, "z": None,
                               "l": [1, "a"], "m": {"x": {"y": 2}}, "ss": {"p", "q"}, "ns": {1, 2}}


async def test_version_condition_keeps_the_highest(moto_endpoint: str, aws_env: dict[str, str]) -> None:
    table = await make_table(moto_endpoint)
    sink = await open_sink(moto_endpoint, table, version_attribute="version")
    try:
        await sink.write(batch([{"id": "a", "version": 3, "v": "three"}, {"id": "b", "version": 1, "v": "one"}]))
        await sink.write(batch([{"id": "a", "version": 2, "v": "two"}, {"id": "b", "version": 2, "v": "two"},
                                {"id": "b", "version": 5, "v": "five"}, {"id": "b", "version": 4, "v": "four"}]))
        await sink.write(batch([{"id": "a", "version": 3, "v": "three again"}]))  # equal version: replay rewrites
        assert sink.stale_skipped == 1
    finally:
        await sink.close()
    stored = await scan(moto_endpoint, table)
    assert stored["a"]["v"] == "three again" and stored["b"]["v"] == "five"


async def test_bad_items_and_missing_table_are_errors(moto_endpoint: str, aws_env: dict[str, str]) -> None:
    table = await make_table(moto_endpoint)
    sink = await open_sink(moto_endpoint, table)
    try:
        with pytest.raises(SinkError, match="dicts"):
            await sink.write(batch(["nope"]))
        with pytest.raises(SinkError, match="key attribute"):
            await sink.write(batch([{"other": 1}]))
        with pytest.raises(SinkError, match="cannot be stored"):
            await sink.write(batch([{"id": "x", "bad": float("nan")}]))
    finally:
        await sink.close()
    with pytest.raises(SinkError, match="ResourceNotFound"):
        await open_sink(moto_endpoint, unique("missing"))


async def test_throttled_batch_write_is_retryable(moto_endpoint: str, aws_env: dict[str, str]) -> None:
    from streamfn.errors import RetryableError
    from tests.throttle_proxy import ThrottleProxy

    table = await make_table(moto_endpoint)
    async with ThrottleProxy(moto_endpoint) as proxy:
        sink = await open_sink(proxy.endpoint, table)
        try:
            proxy.inject("DynamoDB_20120810.BatchWriteItem", 1)
            with pytest.raises(RetryableError, match="ProvisionedThroughputExceeded"):
                await sink.write(batch([{"id": "a"}]))
            await sink.write(batch([{"id": "a"}]))
        finally:
            await sink.close()
    assert list(await scan(moto_endpoint, table)) == ["a"]
