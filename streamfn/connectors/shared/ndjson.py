"""Batch output as NDJSON: what the local, S3 and stdout sinks write."""

from __future__ import annotations

import json
from typing import Any

import orjson

from ...errors import SinkError


def encode_ndjson(items: list[Any]) -> bytes:
    """One JSON document per line; bytes items are written as they are.

    Raises ``SinkError`` for an item JSON cannot hold (a ``Decimal``, a set, an object...): the
    batch then goes through the failure policy like a handler error.
    """
    try:
        return b"".join(
            (item if item.endswith(b"\n") else item + b"\n") if isinstance(item, bytes)
            else orjson.dumps(item, option=orjson.OPT_APPEND_NEWLINE)
            for item in items
        )
    except TypeError:
        # orjson stops at integers beyond 64 bits (a Kinesis sequence number is ~2**185); the
        # standard library writes them. What neither can encode is named, item by item.
        return b"".join(_encode_slowly(index, item) for index, item in enumerate(items))


def _encode_slowly(index: int, item: Any) -> bytes:
    if isinstance(item, bytes):
        return item if item.endswith(b"\n") else item + b"\n"
    try:
        return orjson.dumps(item, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        pass
    try:
        return json.dumps(item, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode() + b"\n"
    except (TypeError, ValueError, RecursionError) as exc:
        raise SinkError(
            f"output item {index} cannot be written as JSON ({type(item).__name__}: {exc}); return "
            "str, int, float, bool, None, lists and dicts of them, or bytes"
        ) from None
