"""Fast decoding of ``GetRecords`` answers (Kinesis and DynamoDB Streams).

Botocore parses every answer through its shape model: for ``GetRecords`` that means a Python
walk over each record, a base64 decode and a datetime per record, about 18 us of CPU per record.
Here aiobotocore still signs, resolves endpoints and sends; a ``before-parse`` hook takes the raw
JSON body of *successful* ``GetRecords`` answers and leaves botocore an empty document to parse.
Error answers are untouched, so error codes and classification work as usual. The body is then
decoded with orjson and ``binascii`` straight into :class:`streamfn.records.Record` values.
"""

from __future__ import annotations

from binascii import a2b_base64
from typing import Any

import msgspec
import orjson

from ...records import Record
from .kpl import MAGIC, deaggregate, hash_key

#: Where the hook leaves the raw body in the parsed answer.
RAW_BODY = "StreamfnRawBody"


def _keep_raw_body(response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any) -> None:
    body = response_dict.get("body")
    if response_dict.get("status_code", 500) < 300 and isinstance(body, bytes):
        customized_response_dict[RAW_BODY] = body
        response_dict["body"] = b"{}"


def install_raw_get_records(client: Any) -> None:
    """Make ``client.get_records`` return the raw body under ``RAW_BODY`` (idempotent)."""
    service_id = client.meta.service_model.service_id.hyphenize()
    client.meta.events.register(f"before-parse.{service_id}.GetRecords", _keep_raw_body,
                                unique_id=f"streamfn-raw-get-records-{service_id}")


def raw_body(answer: dict[str, Any]) -> bytes:
    """The body the hook kept; an answer without it means the hook is missing (a bug)."""
    body = answer.get(RAW_BODY)
    if not isinstance(body, bytes):
        raise RuntimeError("GetRecords answer without its raw body: install_raw_get_records() was not called")
    return body


class KinesisPage(msgspec.Struct):
    """One decoded Kinesis ``GetRecords`` answer."""

    records: list[Record]
    next_iterator: str | None
    behind_ms: float | None
    child_shards: list[str]
    #: The sequence of the last Kinesis record in the answer (aggregates count once), or None.
    last_sequence: int | None


def decode_kinesis(body: bytes, shard_id: str, *, deaggregate_kpl: bool = True,
                   hash_range: tuple[int, int] | None = None) -> KinesisPage:
    """Records of one answer in shard order, KPL aggregates expanded into sub-records.

    ``hash_range`` drops sub-records routed outside the shard (they are read in a sibling
    after a reshard), as the KCL does.
    """
    doc = orjson.loads(body)
    out: list[Record] = []
    append = out.append
    raw_records = doc.get("Records") or ()
    for raw in raw_records:
        data = a2b_base64(raw["Data"])
        sequence = int(raw["SequenceNumber"])
        arrival = raw.get("ApproximateArrivalTimestamp") or 0.0
        if deaggregate_kpl and data[:4] == MAGIC:
            users = deaggregate(data)
            if users is not None:
                for sub, user in enumerate(users):
                    if hash_range is not None and not hash_range[0] <= hash_key(user) <= hash_range[1]:
                        continue
                    append(Record(shard_id, sequence, user.partition_key, user.data, arrival, sub))
                continue
        append(Record(shard_id, sequence, raw["PartitionKey"], data, arrival))
    behind = doc.get("MillisBehindLatest")
    children = [child["ShardId"] for child in doc.get("ChildShards") or ()]
    return KinesisPage(
        records=out,
        next_iterator=doc.get("NextShardIterator"),
        behind_ms=float(behind) if behind is not None else None,
        child_shards=children,
        last_sequence=int(raw_records[-1]["SequenceNumber"]) if raw_records else None,
    )


class StreamsPage(msgspec.Struct):
    """One decoded DynamoDB Streams ``GetRecords`` answer."""

    records: list[Record]
    next_iterator: str | None


def decode_dynamodb_streams(body: bytes, shard_id: str, stream_arn: str) -> StreamsPage:
    """Records whose ``attributes`` hold the Lambda-shaped event record and whose ``data`` is
    the JSON of its ``dynamodb`` part (so filters and ``Record.json()`` see Keys and images)."""
    doc = orjson.loads(body)
    dumps = orjson.dumps
    out: list[Record] = []
    for raw in doc.get("Records") or ():
        change = raw.get("dynamodb") or {}
        raw["eventSourceARN"] = stream_arn
        key = dumps(change.get("Keys") or {}, option=orjson.OPT_SORT_KEYS).decode()
        out.append(Record(shard_id, int(change["SequenceNumber"]), key, dumps(change),
                          float(change.get("ApproximateCreationDateTime") or 0.0), 0, raw))
    return StreamsPage(records=out, next_iterator=doc.get("NextShardIterator"))
