"""The event shapes AWS Lambda hands to stream handlers, built from a streamfn Batch."""

from __future__ import annotations

from base64 import b64encode
from typing import Any

from .records import Batch

DEFAULT_INVOKE_IDENTITY_ARN = "arn:aws:iam::000000000000:role/streamfn"


def kinesis_event(
    batch: Batch,
    stream_arn: str,
    region: str,
    invoke_identity_arn: str = DEFAULT_INVOKE_IDENTITY_ARN,
) -> dict[str, Any]:
    """The ``{"Records": [...]}`` event Lambda's Kinesis event source mapping sends.

    Sequence numbers are rendered as decimal strings and data as base64, exactly as Lambda
    does, so an unmodified Lambda handler runs on any source that uses this shape.
    """
    shard_id = batch.shard_id
    return {
        "Records": [
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": r.partition_key,
                    "sequenceNumber": str(r.sequence),
                    "data": b64encode(r.data).decode("ascii"),
                    "approximateArrivalTimestamp": r.arrival_time,
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"{shard_id}:{r.sequence}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": invoke_identity_arn,
                "awsRegion": region,
                "eventSourceARN": stream_arn,
            }
            for r in batch.records
        ]
    }
