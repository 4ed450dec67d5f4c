"""The DynamoDB Streams source against moto: INSERT/MODIFY/REMOVE records, resume, event shape."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streamfn.connectors.dynamodb.dynamodb_json import item_from_dynamodb
from streamfn.connectors.dynamodb_streams.source import DynamoDBStreamsSource, DynamoDBStreamsSourceConfig
from streamfn.errors import ConfigError, SourceError
from streamfn.protocols.source import StartingPosition
from streamfn.records import Batch
from tests.integration.aws_support import CTX, client, drain, unique

TRIM = StartingPosition()


async def create_table(ddb: Any, name: str, *, stream: bool = True) -> str:
    args: dict[str, Any] = {}
    if stream:
        args["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    answer = await ddb.create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}], **args,
    )
    return str(answer["TableDescription"].get("LatestStreamArn", ""))


async def changes(ddb: Any, table: str) -> None:
    await ddb.put_item(TableName=table, Item={"id": {"S": "a"}, "n": {"N": "1"}})
    await ddb.put_item(TableName=table, Item={"id": {"S": "b"}, "n": {"N": "2"}, "tags": {"SS": ["x", "y"]}})
    await ddb.update_item(TableName=table, Key={"id": {"S": "a"}}, UpdateExpression="SET n = :n",
                          ExpressionAttributeValues={":n": {"N": "1.5"}})
    await ddb.delete_item(TableName=table, Key={"id": {"S": "b"}})


def source(endpoint: str, **options: Any) -> DynamoDBStreamsSource:
    options.setdefault("idle_interval", 0.05)
    options.setdefault("max_reads_per_second", 50.0)
    options.setdefault("backoff_initial", 0.01)
    return DynamoDBStreamsSourceConfig(endpoint_url=endpoint, **options).build(CTX)


async def test_insert_modify_remove_in_lambda_shape(moto_endpoint: str, aws_env: dict[str, str]) -> None:
    table = unique("t")
    async with client("dynamodb", moto_endpoint) as ddb:
        arn = await create_table(ddb, table)
        await changes(ddb, table)
    src = source(moto_endpoint, table=table)
    await src.open()
    try:
        assert src.stream_arn == arn
        shards = await src.list_shards()
        records = []
        for shard in shards:
            records += (await drain(src.reader(shard, None, TRIM)))[0]
        event = src.lambda_event(Batch(shards[0].shard_id, records))
    finally:
        await src.close()
    assert [r.attributes["eventName"] for r in records if r.attributes] == ["INSERT", "INSERT", "MODIFY", "REMOVE"]
    sequences = [r.sequence for r in records]
    assert sequences == sorted(sequences) and len(set(sequences)) == 4
    modify = records[2]
    assert modify.json()["Keys"] == {"id": {"S": "a"}}
    assert item_from_dynamodb(modify.json()["OldImage"]) == {"id": "a", "n": 1}
    assert item_from_dynamodb(modify.json()["NewImage"]) == {"id": "a", "n": 1.5}
    assert item_from_dynamodb(records[1].json()["NewImage"])["tags"] == {"x", "y"}
    assert item_from_dynamodb(records[3].json()["OldImage"])["id"] == "b"
    assert records[0].arrival_time > 1e9 and records[0].partition_key == orjson.dumps({"id": {"S": "a"}}).decode()
    items = event["Records"]
    assert [i["eventName"] for i in items] == ["INSERT", "INSERT", "MODIFY", "REMOVE"]
    for item, record in zip(items, records, strict=True):
        assert item["eventSource"] == "aws:dynamodb" and item["eventSourceARN"] == arn
        assert item["dynamodb"]["SequenceNumber"] == str(int(item["dynamodb"]["SequenceNumber"]))
        assert int(item["dynamodb"]["SequenceNumber"]) == record.sequence
        assert item["dynamodb"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"
        assert isinstance(item["dynamodb"]["ApproximateCreationDateTime"], (int, float))
        assert item["dynamodb"]["SizeBytes"] > 0 and "eventID" in item and "awsRegion" in item


async def test_resume_after_a_record_and_latest(moto_endpoint: str, aws_env: dict[str, str]) -> None:
    table = unique("t")
    async with client("dynamodb", moto_endpoint) as ddb:
        arn = await create_table(ddb, table)
        await changes(ddb, table)
    src = source(moto_endpoint, stream_arn=arn, iterator_lifetime=0.0)
    await src.open()
    try:
        (shard,) = await src.list_shards()
        everything, _ = await drain(src.reader(shard, None, TRIM))
        rest, _ = await drain(src.reader(shard, everything[1].position, TRIM))
        assert [r.sequence for r in rest] == [r.sequence for r in everything[2:]]
        reader = src.reader(shard, None, TRIM)
        one_by_one, _ = await drain(reader, max_records=1)  # an iterator per read (forced expiry)
        assert [r.sequence for r in one_by_one] == [r.sequence for r in everything]
        assert reader.iterator_acquisitions >= 4
        latest = src.reader(shard, None, StartingPosition("latest"))
        assert (await drain(latest))[0] == []
        async with client("dynamodb", moto_endpoint) as ddb:
            await ddb.put_item(TableName=table, Item={"id": {"S": "c"}})
        (fresh,), _ = await drain(latest, expect=1)
        assert fresh.attributes and fresh.attributes["eventName"] == "INSERT"
        with pytest.raises(SourceError, match="AT_TIMESTAMP"):
            src.reader(shard, None, StartingPosition("at_timestamp", 1.0))
    finally:
        await src.close()


async def test_table_without_stream_is_a_config_error(moto_endpoint: str, aws_env: dict[str, str]) -> None:
    table = unique("t")
    async with client("dynamodb", moto_endpoint) as ddb:
        await create_table(ddb, table, stream=False)
    with pytest.raises(ConfigError, match="no stream"):
        await source(moto_endpoint, table=table).open()
    with pytest.raises(Exception, match="exactly one"):
        DynamoDBStreamsSourceConfig(endpoint_url=moto_endpoint)
