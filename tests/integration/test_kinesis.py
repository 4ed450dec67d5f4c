"""The Kinesis source against kinesis-mock: order, resume, KPL, iterator expiry, throttling, resharding."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest

from streamfn.connectors.kinesis.kpl import UserRecord, aggregate
from streamfn.connectors.kinesis.source import KinesisSource, KinesisSourceConfig
from streamfn.errors import SourceError
from streamfn.protocols.source import ShardInfo, StartingPosition
from streamfn.records import Batch, Position
from tests.integration.aws_support import CTX, client, create_stream, drain, put, shard_hash_starts, unique, wait_active
from tests.throttle_proxy import ThrottleProxy

GET_RECORDS = "Kinesis_20131202.GetRecords"
TRIM = StartingPosition()


def source(endpoint: str, stream: str, **options: Any) -> KinesisSource:
    options.setdefault("backoff_initial", 0.01)
    options.setdefault("backoff_max", 0.05)
    options.setdefault("idle_interval", 0.05)
    options.setdefault("max_reads_per_second", 50.0)
    return KinesisSourceConfig(stream=stream, endpoint_url=endpoint, **options).build(CTX)


async def test_four_shards_read_in_order_per_shard(kinesis_endpoint: str, aws_env: dict[str, str]) -> None:
    name = unique("four")
    async with client("kinesis", kinesis_endpoint) as kinesis:
        await create_stream(kinesis, name, 4)
        starts = list((await shard_hash_starts(kinesis, name)).values())
        put_records = [(f"k{i}", b'{"i": %d}' % i, starts[i % 4]) for i in range(200)]
        placed = await put(kinesis, name, put_records)
    expected: dict[str, list[tuple[int, bytes]]] = {}
    for (shard_id, seq), (_, data, _) in zip(placed, put_records, strict=True):
        expected.setdefault(shard_id, []).append((seq, data))
    src = source(kinesis_endpoint, name)
    await src.open()
    try:
        shards = await src.list_shards()
        assert sorted(s.shard_id for s in shards) == sorted(expected)
        for shard in shards:
            records, ended = await drain(src.reader(shard, None, TRIM), max_records=7)
            assert not ended
            assert [(r.sequence, r.data) for r in records] == expected[shard.shard_id]
            assert all(r.shard_id == shard.shard_id and r.arrival_time > 1e9 for r in records)
    finally:
        await src.close()


async def test_reader_resumes_strictly_after_a_position(kinesis_endpoint: str, aws_env: dict[str, str]) -> None:
    name = unique("resume")
    async with client("kinesis", kinesis_endpoint) as kinesis:
        await create_stream(kinesis, name, 1)
        await put(kinesis, name, [("k", b"%d" % i, None) for i in range(20)])
    src = source(kinesis_endpoint, name)
    await src.open()
    try:
        shard = (await src.list_shards())[0]
        everything, _ = await drain(src.reader(shard, None, TRIM))
        rest, _ = await drain(src.reader(shard, everything[11].position, TRIM))
        assert [r.data for r in rest] == [b"%d" % i for i in range(12, 20)]
        latest = src.reader(shard, None, StartingPosition("latest"))
        assert (await drain(latest))[0] == []
        async with client("kinesis", kinesis_endpoint) as kinesis:
            await put(kinesis, name, [("k", b"new", None)])
        assert [r.data for r in (await drain(latest, expect=1))[0]] == [b"new"]
    finally:
        await src.close()


async def test_kpl_aggregates_are_split_and_resume_inside_one(kinesis_endpoint: str, aws_env: dict[str, str]) -> None:
    name = unique("kpl")
    first = [UserRecord(f"u{i}", b"a%d" % i) for i in range(5)]
    second = [UserRecord(f"v{i}", b"b%d" % i) for i in range(3)]
    broken = bytearray(aggregate(first))
    broken[-1] ^= 0xFF  # bad MD5: passed through whole, as the KCL does
    async with client("kinesis", kinesis_endpoint) as kinesis:
        await create_stream(kinesis, name, 1)
        await put(kinesis, name, [("agg1", aggregate(first), None), ("plain", b"p", None),
                                  ("agg2", aggregate(second), None), ("bad", bytes(broken), None)])
    src = source(kinesis_endpoint, name)
    await src.open()
    try:
        shard = (await src.list_shards())[0]
        records, _ = await drain(src.reader(shard, None, TRIM), max_records=3)
        assert [(r.partition_key, r.data, r.sub_sequence) for r in records[:9]] == [
            *[(f"u{i}", b"a%d" % i, i) for i in range(5)], ("plain", b"p", 0),
            *[(f"v{i}", b"b%d" % i, i) for i in range(3)],
        ]
        assert records[9].data == bytes(broken) and len(records) == 10
        assert len({r.sequence for r in records[:5]}) == 1
        # A checkpoint between sub-records of the first aggregate: the rest of it comes next.
        rest, _ = await drain(src.reader(shard, records[2].position, TRIM))
        assert [r.data for r in rest] == [r.data for r in records[3:]]
        assert Batch(shard.shard_id, records[:5]).last.identifier == f"{records[0].sequence}:4"
    finally:
        await src.close()


async def test_forced_iterator_expiry_reacquires_after_the_last_delivered(
    kinesis_endpoint: str, aws_env: dict[str, str]
) -> None:
    name = unique("expiry")
    async with client("kinesis", kinesis_endpoint) as kinesis:
        await create_stream(kinesis, name, 1)
        await put(kinesis, name, [("k", b"%d" % i, None) for i in range(30)])
    src = source(kinesis_endpoint, name, iterator_lifetime=0.0, read_limit=4)
    await src.open()
    try:
        shard = (await src.list_shards())[0]
        reader = src.reader(shard, None, TRIM)
        records, _ = await drain(reader, max_records=4)
        assert [r.data for r in records] == [b"%d" % i for i in range(30)]
        assert reader.iterator_acquisitions >= 8  # one per read: each iterator was treated as expired
    finally:
        await src.close()


async def test_expired_iterator_answer_is_survived_without_repeats(
    kinesis_endpoint: str, aws_env: dict[str, str]
) -> None:
    name = unique("expired")
    async with client("kinesis", kinesis_endpoint) as kinesis:
        await create_stream(kinesis, name, 1)
        await put(kinesis, name, [("k", b"%d" % i, None) for i in range(12)])
    async with ThrottleProxy(kinesis_endpoint) as proxy:
        src = source(proxy.endpoint, name, read_limit=5)
        await src.open()
        try:
            reader = src.reader((await src.list_shards())[0], None, TRIM)
            first = await reader.read(5, 1.0)
            proxy.inject(GET_RECORDS, 2, error_type="ExpiredIteratorException", message="Iterator expired")
            rest, _ = await drain(reader, max_records=5)
        finally:
            await src.close()
        assert proxy.injected[GET_RECORDS] == 2
    assert [r.data for r in [*first.records, *rest]] == [b"%d" % i for i in range(12)]
    assert reader.iterator_acquisitions == 3


async def test_throttling_and_5xx_are_retried_with_backoff(kinesis_endpoint: str, aws_env: dict[str, str]) -> None:
    name = unique("throttle")
    async with client("kinesis", kinesis_endpoint) as kinesis:
        await create_stream(kinesis, name, 1)
        await put(kinesis, name, [("k", b"%d" % i, None) for i in range(10)])
    async with ThrottleProxy(kinesis_endpoint) as proxy:
        proxy.inject(GET_RECORDS, 3)  # ProvisionedThroughputExceededException
        proxy.inject(GET_RECORDS, 1, error_type="LimitExceededException")
        proxy.inject(GET_RECORDS, 2, status=500)
        proxy.inject(GET_RECORDS, 1, status=503)
        src = source(proxy.endpoint, name)
        await src.open()
        try:
            reader = src.reader((await src.list_shards())[0], None, TRIM)
            records, _ = await drain(reader, expect=10, wait=0.2)
        finally:
            await src.close()
        assert proxy.injected[GET_RECORDS] == 7 and proxy.pending() == 0
    assert [r.data for r in records] == [b"%d" % i for i in range(10)]
    assert reader.retries == 7


async def test_non_retryable_failures_are_errors(kinesis_endpoint: str, aws_env: dict[str, str]) -> None:
    with pytest.raises(SourceError, match=rf"does not exist in us-east-1 at {re.escape(kinesis_endpoint)}: .*\[aws\]"):
        await source(kinesis_endpoint, unique("missing")).open()
    name = unique("denied")
    async with client("kinesis", kinesis_endpoint) as kinesis:
        await create_stream(kinesis, name, 1)
    async with ThrottleProxy(kinesis_endpoint) as proxy:
        proxy.inject(GET_RECORDS, 1, error_type="AccessDeniedException", message="no")
        src = source(proxy.endpoint, name)
        await src.open()
        try:
            reader = src.reader((await src.list_shards())[0], None, TRIM)
            with pytest.raises(SourceError, match="AccessDenied") as caught:
                await reader.read(10, 1.0)
            assert type(caught.value) is SourceError  # not RetryableError
        finally:
            await src.close()


async def test_split_then_merge_ends_parents_and_lists_them_first(
    kinesis_endpoint: str, aws_env: dict[str, str]
) -> None:
    name = unique("reshard")
    async with client("kinesis", kinesis_endpoint) as kinesis:
        await create_stream(kinesis, name, 1)
        await put(kinesis, name, [(f"k{i}", b"before%d" % i, None) for i in range(10)])
        await kinesis.split_shard(StreamName=name, ShardToSplit="shardId-000000000000",
                                  NewStartingHashKey=str(2**127))
        await wait_active(kinesis, name)
        children = await shard_hash_starts(kinesis, name)
        assert len(children) == 2
        await put(kinesis, name, [(f"k{i}", b"after%d" % i, start) for i, start in enumerate(children.values())])
        left, right = sorted(children)
        await kinesis.merge_shards(StreamName=name, ShardToMerge=left, AdjacentShardToMerge=right)
        await wait_active(kinesis, name)
        merged = await shard_hash_starts(kinesis, name)
        await put(kinesis, name, [("m", b"merged", None)])
    src = source(kinesis_endpoint, name)
    await src.open()
    try:
        shards = await src.list_shards()
        ids = [s.shard_id for s in shards]
        by_id = {s.shard_id: s for s in shards}
        (merged_id,) = merged
        assert by_id[left].parent_ids == ("shardId-000000000000",)
        assert set(by_id[merged_id].parent_ids) == {left, right}
        assert ids.index("shardId-000000000000") < ids.index(left) < ids.index(merged_id)
        assert ids.index(right) < ids.index(merged_id)
        seen: dict[str, list[bytes]] = {}
        last: dict[str, Position] = {}
        for shard in shards:
            records, ended = await drain(src.reader(shard, None, TRIM), until_end=shard.shard_id != merged_id)
            seen[shard.shard_id] = [r.data for r in records]
            last[shard.shard_id] = records[-1].position
            assert ended == (shard.shard_id != merged_id)
        assert seen["shardId-000000000000"] == [b"before%d" % i for i in range(10)]
        assert seen[left] == [b"after0"] and seen[right] == [b"after1"] and seen[merged_id] == [b"merged"]
        # Resumed after its last record (a restart before the SHARD_END checkpoint), a closed shard just ends.
        again = await src.reader(by_id[left], last[left], TRIM).read(10, 0.5)
        assert again.shard_end and again.records == []
    finally:
        await src.close()


async def test_lambda_event_shape(kinesis_endpoint: str, aws_env: dict[str, str]) -> None:
    name = unique("shape")
    async with client("kinesis", kinesis_endpoint) as kinesis:
        await create_stream(kinesis, name, 1)
        await put(kinesis, name, [("pk", b"hello", None)])
    src = source(kinesis_endpoint, name, region="us-east-1")
    await src.open()
    try:
        shard = (await src.list_shards())[0]
        records, _ = await drain(src.reader(shard, None, TRIM), expect=1)
        event = src.lambda_event(Batch(shard.shard_id, records))
    finally:
        await src.close()
    (item,) = event["Records"]
    assert base64.b64decode(item["kinesis"]["data"]) == b"hello"
    assert item["kinesis"]["partitionKey"] == "pk"
    assert item["kinesis"]["sequenceNumber"] == str(records[0].sequence)
    assert item["eventID"] == f"{shard.shard_id}:{records[0].sequence}"
    assert item["eventSourceARN"].endswith(f":stream/{name}") and item["awsRegion"] == "us-east-1"
    assert item["eventSource"] == "aws:kinesis" and item["eventName"] == "aws:kinesis:record"


def test_parents_first_orders_children_after_listed_parents() -> None:
    from streamfn.connectors.kinesis.source import parents_first

    shards = [ShardInfo("c", ("a", "b")), ShardInfo("b", ("gone",)), ShardInfo("a")]
    assert [s.shard_id for s in parents_first(shards)] == ["b", "a", "c"]


async def test_endpoint_from_environment_and_stream_by_arn(
    kinesis_endpoint: str, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("env")
    async with client("kinesis", kinesis_endpoint) as kinesis:
        await create_stream(kinesis, name, 1)
        await put(kinesis, name, [("k", b"x", None)])
        arn = (await kinesis.describe_stream_summary(StreamName=name))["StreamDescriptionSummary"]["StreamARN"]
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", kinesis_endpoint)
    for stream in (name, arn):
        src = KinesisSourceConfig(stream=stream, idle_interval=0.05).build(CTX)
        await src.open()
        try:
            assert src.stream_arn == arn and src.name == name
            records, _ = await drain(src.reader((await src.list_shards())[0], None, TRIM), expect=1)
            assert [r.data for r in records] == [b"x"]
        finally:
            await src.close()
