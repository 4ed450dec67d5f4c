"""Lambda's on-failure record (§2.4 of the reference), with the failed records always included."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from ...lambda_shapes import local_function_arn
from ...protocols.destination import FailedBatch
from ...timefmt import iso_time

#: The batch-info keys of Lambda's Kafka failure records (MSK, self-managed).
KAFKA_BATCH_INFO = frozenset({"KafkaBatchInfo", "SelfManagedKafkaBatchInfo"})


def json_text(text: str) -> str:
    """``text`` as JSON can carry it: lone surrogates (a handler's error message built from
    undecodable bytes) are spelled out as ``\\udcxx`` instead of failing the whole record."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def failure_record(failure: FailedBatch, *, with_payload: bool = False) -> dict[str, Any]:
    """The JSON document a destination stores for ``failure``; ``with_payload`` adds the event the
    handler was called with as ``payload``, as Lambda's S3 destination does (stream destinations,
    which slice large batches, leave it out)."""
    records = failure.records
    request: dict[str, Any] = {
        "requestId": str(uuid.uuid4()),
        "functionArn": failure.function_arn or local_function_arn(failure.pipeline),
        "condition": failure.condition,
        "approximateInvokeCount": max(1, failure.invoke_count),
    }
    doc: dict[str, Any] = {"requestContext": request}
    if failure.condition == "RetryAttemptsExhausted":
        doc["responseContext"] = {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": "Unhandled" if failure.function_error else None,
        }
    doc["version"] = "1.0"
    doc["timestamp"] = iso_time(failure.failed_at)
    doc[failure.batch_info_key] = (_kafka_batch_info(failure) if failure.batch_info_key in KAFKA_BATCH_INFO
                                   else _stream_batch_info(failure))
    if with_payload and failure.payload is not None:
        doc["payload"] = failure.payload
    if failure.error:
        doc["errorMessage"] = json_text(failure.error)
    doc["records"] = [
        {
            "shardId": r.shard_id,
            "sequenceNumber": r.identifier,
            "partitionKey": json_text(r.partition_key),
            "approximateArrivalTimestamp": r.arrival_time,
            "data": base64.b64encode(r.data).decode("ascii"),
        }
        for r in records
    ]
    return doc


def _stream_batch_info(failure: FailedBatch) -> dict[str, Any]:
    """``KinesisBatchInfo`` / ``DDBStreamBatchInfo``: the shard, its first and last sequence numbers."""
    first, last, records = failure.records[0], failure.records[-1], failure.records
    return {
        "shardId": failure.shard_id,
        "startSequenceNumber": first.identifier,
        "endSequenceNumber": last.identifier,
        "approximateArrivalOfFirstRecord": iso_time(first.arrival_time),
        "approximateArrivalOfLastRecord": iso_time(last.arrival_time),
        "batchSize": len(records),
        "streamArn": failure.stream_arn or f"arn:aws:kinesis:local:000000000000:stream/{failure.stream}",
    }


def _kafka_batch_info(failure: FailedBatch) -> dict[str, Any]:
    """``KafkaBatchInfo`` (MSK, with ``eventSourceArn``) / ``SelfManagedKafkaBatchInfo``: the batch's
    offsets and timestamps per ``<topic>-<partition>`` (a streamfn batch holds one partition)."""
    records, event = failure.records, failure.payload or {}
    info: dict[str, Any] = {"batchSize": len(records)}
    if failure.stream_arn:
        info["eventSourceArn"] = failure.stream_arn
    info["bootstrapServers"] = event.get("bootstrapServers", "")
    info["payloadSize"] = len(orjson.dumps(event)) if event else sum(len(r.data) for r in records)
    info["recordsInfo"] = {
        failure.shard_id: {
            "firstRecordOffset": records[0].identifier,
            "lastRecordOffset": records[-1].identifier,
            "firstRecordTimestamp": iso_time(records[0].arrival_time),
            "lastRecordTimestamp": iso_time(records[-1].arrival_time),
        }
    }
    return info


def failure_key(failure: FailedBatch) -> str:
    """Where an object-store destination keeps ``failure``: Lambda's S3 key layout, made deterministic
    (first and last position instead of a time and a random id) so a batch disposed twice is stored once."""
    first, last = failure.records[0], failure.records[-1]
    day = datetime.fromtimestamp(first.arrival_time, tz=UTC).strftime("%Y/%m/%d")
    return (f"aws/lambda/{failure.pipeline}/{failure.shard_id}/{day}/"
            f"{first.sequence:020d}_{first.sub_sequence}-{last.sequence:020d}_{last.sub_sequence}.json")
