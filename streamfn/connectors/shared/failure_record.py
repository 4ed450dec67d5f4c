"""Lambda's on-failure record (§2.4 of the reference), with the failed records always included."""

from __future__ import annotations

import base64
import uuid
from typing import Any

from ...protocols.destination import FailedBatch
from ...timefmt import iso_time

_BATCH_INFO_KEY = {"dynamodb_streams": "DDBStreamBatchInfo"}


def json_text(text: str) -> str:
    """``text`` as JSON can carry it: lone surrogates (a handler's error message built from
    undecodable bytes) are spelled out as ``\\udcxx`` instead of failing the whole record."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def failure_record(failure: FailedBatch) -> dict[str, Any]:
    """The JSON document a destination stores for ``failure``."""
    records = failure.records
    first, last = records[0], records[-1]
    request: dict[str, Any] = {
        "requestId": str(uuid.uuid4()),
        "functionArn": f"arn:aws:lambda:local:000000000000:function:{failure.pipeline}",
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
    doc[_BATCH_INFO_KEY.get(failure.source_kind, "KinesisBatchInfo")] = {
        "shardId": failure.shard_id,
        "startSequenceNumber": first.identifier,
        "endSequenceNumber": last.identifier,
        "approximateArrivalOfFirstRecord": iso_time(first.arrival_time),
        "approximateArrivalOfLastRecord": iso_time(last.arrival_time),
        "batchSize": len(records),
        "streamArn": f"arn:aws:{failure.source_kind}:local:000000000000:stream/{failure.stream}",
    }
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
