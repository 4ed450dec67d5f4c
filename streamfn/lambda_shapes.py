"""The event shapes AWS Lambda hands to stream handlers, built from a streamfn Batch."""

from __future__ import annotations

from base64 import b64encode
from typing import Any

from .records import Batch

DEFAULT_INVOKE_IDENTITY_ARN = "arn:aws:iam::000000000000:role/streamfn"


def local_function_arn(pipeline: str) -> str:
    """The function ARN a pipeline without ``function_arn`` goes by (region ``local``, account 0)."""
    return f"arn:aws:lambda:local:000000000000:function:{pipeline}"


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


def kafka_event(
    batch: Batch,
    bootstrap_servers: str,
    event_source_arn: str | None = None,
    event_source: str = "aws:kafka",
) -> dict[str, Any]:
    """The event Lambda's Kafka event source mapping sends (MSK shape by default).

    Records are grouped under ``"<topic>-<partition>"``; key and value are base64, headers a
    list of ``{name: [byte, ...]}``, timestamps in epoch milliseconds. The record attributes
    the Kafka source sets (``topic``, ``partition``, ``key``, ``headers``, ``timestamp_type``)
    are read back here, so a batch from any other source gets an event with empty metadata.
    """
    records: dict[str, list[dict[str, Any]]] = {}
    for r in batch.records:
        attributes = r.attributes or {}
        topic = attributes.get("topic", "")
        partition = attributes.get("partition", 0)
        entry: dict[str, Any] = {
            "topic": topic,
            "partition": partition,
            "offset": r.sequence,
            "timestamp": round(r.arrival_time * 1000),
            "timestampType": attributes.get("timestamp_type", "CREATE_TIME"),
            "value": b64encode(r.data).decode("ascii"),
            "headers": [{name: list(value)} for name, value in attributes.get("headers", ())],
        }
        key = attributes.get("key")
        if key is not None:
            entry["key"] = b64encode(key).decode("ascii")
        records.setdefault(f"{topic}-{partition}", []).append(entry)
    event: dict[str, Any] = {"eventSource": event_source, "bootstrapServers": bootstrap_servers, "records": records}
    if event_source_arn is not None:
        event["eventSourceArn"] = event_source_arn
    return event


def dynamodb_streams_event(batch: Batch, stream_arn: str, region: str) -> dict[str, Any]:
    """The ``{"Records": [...]}`` event Lambda's DynamoDB Streams mapping sends.

    The DynamoDB Streams source keeps each record's Lambda-shaped form in ``attributes``
    (``eventID``, ``eventName``, ``dynamodb`` with Keys/NewImage/OldImage/SequenceNumber/
    SizeBytes/StreamViewType/ApproximateCreationDateTime...), so the event is rebuilt as it was read.
    """
    records = []
    for r in batch.records:
        attributes = r.attributes or {}
        record = dict(attributes) if "dynamodb" in attributes else {
            "eventID": f"{batch.shard_id}:{r.sequence}",
            "eventName": "INSERT",
            "eventVersion": "1.1",
            "eventSource": "aws:dynamodb",
            "awsRegion": region,
            "dynamodb": {"SequenceNumber": str(r.sequence), "SizeBytes": len(r.data),
                         "ApproximateCreationDateTime": r.arrival_time},
        }
        record.setdefault("awsRegion", region)
        record["eventSourceARN"] = stream_arn
        records.append(record)
    return {"Records": records}
