"""The S3 sink against moto: deterministic keys, overwrite on replay, gzip, multipart, Content-MD5."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamfn.components import BuildContext
from streamfn.connectors.s3.sink import MIB, S3Sink, S3SinkConfig
from streamfn.errors import ConfigError
from streamfn.protocols.sink import SinkBatch
from streamfn.records import Position
from tests.integration.aws_support import client, unique

CTX = BuildContext(pipeline="clicks", config_dir=Path("."), state_dir=Path("."))
ARRIVAL = 1_700_000_000.5  # 2023-11-14 22:13 UTC


def batch(items: list[Any], first: int = 10, last: int = 12, shard: str = "shardId-000000000001") -> SinkBatch:
    return SinkBatch(pipeline="clicks", stream="s1", shard_id=shard, first=Position(first), last=Position(last),
                     first_arrival=ARRIVAL, items=items)


async def objects(endpoint: str, bucket: str) -> dict[str, tuple[bytes, dict[str, Any]]]:
    out = {}
    async with client("s3", endpoint) as s3:
        listing = await s3.list_objects_v2(Bucket=bucket)
        for entry in listing.get("Contents", ()):
            obj = await s3.get_object(Bucket=bucket, Key=entry["Key"])
            async with obj["Body"] as body:
                out[entry["Key"]] = (await body.read(), obj)
    return out


async def test_one_object_per_batch_and_replay_overwrites(moto_endpoint: str, aws_env: dict[str, str]) -> None:
    bucket = unique("b")
    sink = S3SinkConfig(bucket=bucket, endpoint_url=moto_endpoint, create_bucket=True,
                        key="{pipeline}/{stream}/{year}/{month}/{day}/{hour}/{shard_id}/{first_seq}-{last_seq}-{lane}"
                        ).build(CTX)
    await sink.open()
    try:
        await sink.write(batch([{"a": 1}, {"b": 2}]))
        await sink.write(batch([{"a": 1}, {"b": 3}]))  # a replay of the same records
        await sink.write(batch([{"c": 4}], first=13, last=13))
    finally:
        await sink.close()
    found = await objects(moto_endpoint, bucket)
    assert sorted(found) == ["clicks/s1/2023/11/14/22/shardId-000000000001/10-12-0",
                             "clicks/s1/2023/11/14/22/shardId-000000000001/13-13-0"]
    body, meta = found["clicks/s1/2023/11/14/22/shardId-000000000001/10-12-0"]
    assert [orjson.loads(line) for line in body.splitlines()] == [{"a": 1}, {"b": 3}]
    assert meta["ContentType"] == "application/x-ndjson"


async def test_gzip_and_default_key(moto_endpoint: str, aws_env: dict[str, str]) -> None:
    bucket = unique("b")
    sink = S3SinkConfig(bucket=bucket, endpoint_url=moto_endpoint, create_bucket=True, gzip=True).build(CTX)
    await sink.open()
    try:
        await sink.write(batch([{"x": i} for i in range(100)]))
        (key,) = [sink.key_for(batch([]))]
    finally:
        await sink.close()
    found = await objects(moto_endpoint, bucket)
    assert list(found) == [key] and key.endswith(".ndjson.gz") and key.startswith("clicks/shardId-000000000001/")
    body, meta = found[key]
    assert [orjson.loads(line) for line in gzip.decompress(body).splitlines()] == [{"x": i} for i in range(100)]
    assert meta["ContentEncoding"] == "gzip"


async def test_multipart_above_threshold(moto_endpoint: str, aws_env: dict[str, str]) -> None:
    bucket = unique("b")
    sink = S3SinkConfig(bucket=bucket, endpoint_url=moto_endpoint, create_bucket=True,
                        multipart_threshold=5 * MIB, part_size=5 * MIB).build(CTX)
    items = [{"i": i, "pad": "x" * 1000} for i in range(12_000)]  # ~12 MB: 3 parts
    await sink.open()
    try:
        await sink.write(batch(items))
        key = sink.key_for(batch([]))
        expected = sink.body_for(batch(items))
    finally:
        await sink.close()
    body, meta = (await objects(moto_endpoint, bucket))[key]
    assert body == expected
    assert meta["ETag"].strip('"').endswith("-3")  # a multipart object's ETag counts its parts
    async with client("s3", moto_endpoint) as s3:
        assert (await s3.list_multipart_uploads(Bucket=bucket)).get("Uploads", []) == []
    assert hashlib.md5(body).hexdigest() == hashlib.md5(expected).hexdigest()


async def test_missing_bucket_fails_and_bad_template_is_a_config_error(
    moto_endpoint: str, aws_env: dict[str, str]
) -> None:
    sink = S3Sink(S3SinkConfig(bucket=unique("missing"), endpoint_url=moto_endpoint))
    await sink.open()
    try:
        with pytest.raises(Exception, match="NoSuchBucket"):
            await sink.write(batch([{"a": 1}]))
    finally:
        await sink.close()
    with pytest.raises(ConfigError):
        S3SinkConfig(bucket="b", key="{pipeline}/fixed").build(CTX)


async def test_slow_down_is_retryable_and_a_retry_lands_once(moto_endpoint: str, aws_env: dict[str, str]) -> None:
    from streamfn.errors import RetryableError
    from tests.throttle_proxy import ANY, ThrottleProxy

    bucket = unique("b")
    async with ThrottleProxy(moto_endpoint) as proxy:
        sink = S3SinkConfig(bucket=bucket, endpoint_url=proxy.endpoint, create_bucket=True).build(CTX)
        await sink.open()
        try:
            proxy.inject(ANY, 1, status=503, error_type="SlowDown")
            with pytest.raises(RetryableError):
                await sink.write(batch([{"a": 1}]))
            await sink.write(batch([{"a": 1}]))  # what the engine does next
        finally:
            await sink.close()
    assert list(await objects(moto_endpoint, bucket)) == [sink.key_for(batch([]))]
