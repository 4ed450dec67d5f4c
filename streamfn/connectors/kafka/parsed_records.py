"""The source's consumer gets aiokafka's parsed records as they are, without a ``ConsumerRecord`` each.

aiokafka's fetcher wraps every record it parsed (a C object with ``offset``, ``timestamp``,
``timestamp_type``, ``key``, ``value``, ``headers``) in a ``ConsumerRecord`` through a Python
method and an 11-field dataclass: ~0.5 µs a message, more than the rest of streamfn's path for it,
and the source reads five fields of it into columns at once (``columns.Fetched``). The source's
consumer is marked by its value deserializer, :func:`keep_value`; for a consumer so marked, and
for no other, ``PartitionRecords._consumer_record`` hands the parsed record on unchanged. Every
other consumer in the process gets its ``ConsumerRecord``s as before.

If an aiokafka release moves that method, :func:`install` changes nothing and the mark is an
ordinary identity deserializer: the source gets ``ConsumerRecord``s again, slower, never wrong.
``tests/unit/test_kafka_parsed_records.py`` pins the method, so such a release is noticed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def keep_value(value: bytes | None) -> bytes | None:
    """The source consumer's value deserializer: the value unchanged (and the consumer's mark)."""
    return value


_installed = False


def install() -> bool:
    """Once per process: let consumers marked by :func:`keep_value` skip the ``ConsumerRecord``.
    False when this aiokafka has no such method to hook (records then stay ``ConsumerRecord``s)."""
    global _installed
    if _installed:
        return True
    from aiokafka.consumer.fetcher import PartitionRecords

    wrap: Callable[[Any, Any, Any], Any] | None = PartitionRecords.__dict__.get("_consumer_record")
    if wrap is None:
        return False

    def consumer_record(self: Any, tp: Any, record: Any) -> Any:
        if self._value_deserializer is keep_value:
            return record
        return wrap(self, tp, record)

    PartitionRecords._consumer_record = consumer_record
    _installed = True
    return True
