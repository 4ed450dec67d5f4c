"""Decoding raw GetRecords bodies: what botocore would have produced, KPL, hash-range filtering."""

from __future__ import annotations

import base64
import hashlib

import orjson

from streamfn.connectors.kinesis.decode import RAW_BODY, _keep_raw_body, decode_dynamodb_streams, decode_kinesis
from streamfn.connectors.kinesis.kpl import UserRecord, aggregate


def kinesis_body(records: list[tuple[str, str, bytes]], **extra: object) -> bytes:
    return orjson.dumps({
        "Records": [{"SequenceNumber": seq, "PartitionKey": pk, "Data": base64.b64encode(data).decode(),
                     "ApproximateArrivalTimestamp": 1.7e9 + i} for i, (seq, pk, data) in enumerate(records)],
        **extra,
    })


def test_plain_records_and_page_fields() -> None:
    seq = "49590338271490256608559692538361571095921575989136588898"
    body = kinesis_body([(seq, "k", b"hello"), ("7", "j", b"")], NextShardIterator="it", MillisBehindLatest=1200)
    page = decode_kinesis(body, "shardId-1")
    assert [(r.sequence, r.partition_key, r.data, r.sub_sequence) for r in page.records] == [
        (int(seq), "k", b"hello", 0), (7, "j", b"", 0)]
    assert page.records[0].arrival_time == 1.7e9 and page.records[0].shard_id == "shardId-1"
    assert page.next_iterator == "it" and page.behind_ms == 1200.0 and page.last_sequence == 7


def test_closed_shard_page() -> None:
    body = orjson.dumps({"Records": [], "MillisBehindLatest": 0,
                         "ChildShards": [{"ShardId": "c1", "ParentShards": ["p"], "HashKeyRange": {}}]})
    page = decode_kinesis(body, "p")
    assert page.next_iterator is None and page.child_shards == ["c1"] and page.last_sequence is None


def test_kpl_expanded_and_filtered_by_hash_range() -> None:
    users = [UserRecord("a", b"1"), UserRecord("b", b"2", explicit_hash_key="5"), UserRecord("c", b"3")]
    body = kinesis_body([("100", "agg", aggregate(users))])
    page = decode_kinesis(body, "s")
    assert [(r.sequence, r.sub_sequence, r.partition_key, r.data) for r in page.records] == [
        (100, 0, "a", b"1"), (100, 1, "b", b"2"), (100, 2, "c", b"3")]
    key_a, key_c = (int(hashlib.md5(k).hexdigest(), 16) for k in (b"a", b"c"))
    assert 5 < key_a < key_c
    kept = decode_kinesis(body, "s", hash_range=(0, key_a)).records
    assert [(r.partition_key, r.sub_sequence) for r in kept] == [("a", 0), ("b", 1)]
    kept = decode_kinesis(body, "s", hash_range=(key_a + 1, 2**128 - 1)).records
    assert [(r.partition_key, r.sub_sequence) for r in kept] == [("c", 2)]
    assert decode_kinesis(body, "s", deaggregate_kpl=False).records[0].data == aggregate(users)


def test_dynamodb_streams_record_shape() -> None:
    change = {"Keys": {"id": {"S": "a"}}, "NewImage": {"id": {"S": "a"}}, "SequenceNumber": "300000000000000499659",
              "SizeBytes": 26, "StreamViewType": "NEW_IMAGE", "ApproximateCreationDateTime": 1.7e9}
    body = orjson.dumps({"Records": [{"eventID": "e1", "eventName": "INSERT", "eventVersion": "1.1",
                                      "eventSource": "aws:dynamodb", "awsRegion": "us-east-1", "dynamodb": change}],
                         "NextShardIterator": "n"})
    page = decode_dynamodb_streams(body, "shard-1", "arn:stream")
    (record,) = page.records
    assert record.sequence == 300000000000000499659 and record.json() == change
    assert record.attributes is not None and record.attributes["eventSourceARN"] == "arn:stream"
    assert record.attributes["eventName"] == "INSERT" and record.arrival_time == 1.7e9
    assert page.next_iterator == "n"


def test_hook_keeps_only_successful_bodies() -> None:
    ok = {"status_code": 200, "body": b'{"Records": []}'}
    custom: dict[str, object] = {}
    _keep_raw_body(response_dict=ok, customized_response_dict=custom)
    assert custom[RAW_BODY] == b'{"Records": []}' and ok["body"] == b"{}"
    error = {"status_code": 400, "body": b'{"__type": "ExpiredIteratorException"}'}
    custom = {}
    _keep_raw_body(response_dict=error, customized_response_dict=custom)
    assert custom == {} and error["body"] == b'{"__type": "ExpiredIteratorException"}'
