"""Event filters applied to records: the record's metadata and its JSON data, Lambda's way.

A record is matched as the event Lambda would filter: metadata at the top level, the parsed
data under the source's data key (``data`` for Kinesis and the local log, ``dynamodb`` for
DynamoDB Streams, ``value`` for Kafka). Data is parsed only when a pattern looks into it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from ..records import Record
from .batching import RecordFilter
from .filters import NOT_JSON, FilterSet


def record_filter(patterns: Sequence[str | Mapping[str, Any]], data_key: str = "data") -> RecordFilter | None:
    """A predicate for the batcher, or None when there are no patterns (nothing is filtered)."""
    if not patterns:
        return None
    filters = FilterSet(patterns, data_key=data_key)
    parse = filters.uses_data
    loads = orjson.loads

    def accept(record: Record) -> bool:
        event: dict[str, Any] = {
            "partitionKey": record.partition_key,
            "sequenceNumber": record.identifier,
            "shardId": record.shard_id,
            "approximateArrivalTimestamp": record.arrival_time,
        }
        if record.attributes:
            event.update(record.attributes)
        if parse:
            try:
                event[data_key] = loads(record.data)
            except orjson.JSONDecodeError:
                event[data_key] = NOT_JSON
        return filters.matches(event)

    return accept
