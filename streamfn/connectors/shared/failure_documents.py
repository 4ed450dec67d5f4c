"""On-failure records for a stream destination (the local log, Kinesis, a Kafka topic), in slices.

A stream record has a size limit (Kinesis: 1 MiB), so a large failed batch is sent as several
failure records, each carrying the batch info and a slice of the records, keyed by shard.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from ...errors import SinkError
from ...protocols.destination import FailedBatch
from .failure_record import failure_record

#: Room for the failure record's metadata under the 1 MiB Kinesis record limit.
MAX_DOCUMENT_BYTES = 900 * 1024


def failure_documents(failure: FailedBatch, limit: int = MAX_DOCUMENT_BYTES) -> list[bytes]:
    """The failure as one or more JSON documents, each under ``limit`` bytes when possible."""
    documents: list[bytes] = []
    chunk: list[Any] = []
    size = 0
    for record in failure.records:
        cost = len(record.data) * 4 // 3 + len(record.partition_key) + 200
        if chunk and size + cost > limit:
            documents.append(_document(failure, chunk))
            chunk, size = [], 0
        chunk.append(record)
        size += cost
    if chunk:
        documents.append(_document(failure, chunk))
    return documents


def _document(failure: FailedBatch, records: list[Any]) -> bytes:
    try:
        return orjson.dumps(failure_record(msgspec.structs.replace(failure, records=records)))
    except orjson.JSONEncodeError as exc:
        raise SinkError(f"the failure record of shard {failure.shard_id} is not JSON ({exc})") from exc
