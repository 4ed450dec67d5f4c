"""DynamoDB JSON (``{"S": "x"}``, ``{"N": "1"}``...) to plain Python values and back.

For handler authors reading DynamoDB Streams records (``record.attributes["dynamodb"]["NewImage"]``)
and for the DynamoDB sink, which writes plain values. Numbers become ``int`` when integral and
``float`` otherwise (pass ``decimal=True`` for exact ``Decimal``); sets become Python sets;
binary values arrive base64 in raw JSON and as bytes from botocore, and come out as bytes.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

__all__ = ["from_dynamodb", "item_from_dynamodb", "item_to_dynamodb", "to_dynamodb"]


def _number(text: str, decimal: bool) -> int | float | Decimal:
    if decimal:
        return Decimal(text)
    if "." in text or "e" in text or "E" in text:
        return float(text)
    return int(text)


def _binary(value: str | bytes) -> bytes:
    return base64.b64decode(value) if isinstance(value, str) else bytes(value)


def from_dynamodb(value: Mapping[str, Any], *, decimal: bool = False) -> Any:
    """One attribute value (``{"S": "x"}``) as a plain Python value."""
    if len(value) != 1:
        raise ValueError(f"not a DynamoDB attribute value: {value!r}")
    ((kind, inner),) = value.items()
    if kind == "S":
        return inner
    if kind == "N":
        return _number(inner, decimal)
    if kind == "BOOL":
        return bool(inner)
    if kind == "NULL":
        return None
    if kind == "M":
        return {k: from_dynamodb(v, decimal=decimal) for k, v in inner.items()}
    if kind == "L":
        return [from_dynamodb(v, decimal=decimal) for v in inner]
    if kind == "B":
        return _binary(inner)
    if kind == "SS":
        return set(inner)
    if kind == "NS":
        return {_number(v, decimal) for v in inner}
    if kind == "BS":
        return {_binary(v) for v in inner}
    raise ValueError(f"unknown DynamoDB type {kind!r}")


def item_from_dynamodb(item: Mapping[str, Mapping[str, Any]] | None, *, decimal: bool = False) -> dict[str, Any]:
    """A whole item, image or key (``{"id": {"S": "a"}}`` → ``{"id": "a"}``); None gives ``{}``."""
    if not item:
        return {}
    return {name: from_dynamodb(value, decimal=decimal) for name, value in item.items()}


def _number_text(value: int | float | Decimal) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"DynamoDB cannot store {value!r}")
        return repr(value)
    if isinstance(value, Decimal) and not value.is_finite():
        raise ValueError(f"DynamoDB cannot store {value!r}")
    return str(value)


def to_dynamodb(value: Any) -> dict[str, Any]:
    """A plain Python value as an attribute value for botocore (binary stays bytes)."""
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, (int, float, Decimal)):
        return {"N": _number_text(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"B": bytes(value)}
    if isinstance(value, Mapping):
        return {"M": {str(k): to_dynamodb(v) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"L": [to_dynamodb(v) for v in value]}
    if isinstance(value, (set, frozenset)):
        if not value:
            raise ValueError("DynamoDB has no empty sets")
        if all(isinstance(v, str) for v in value):
            return {"SS": sorted(value)}
        if all(isinstance(v, (int, float, Decimal)) and not isinstance(v, bool) for v in value):
            return {"NS": sorted(_number_text(v) for v in value)}
        if all(isinstance(v, (bytes, bytearray)) for v in value):
            return {"BS": sorted(bytes(v) for v in value)}
        raise ValueError(f"a DynamoDB set holds one type of strings, numbers or binary: {value!r}")
    raise TypeError(f"cannot store a {type(value).__name__} in DynamoDB")


def item_to_dynamodb(item: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A plain dict as a DynamoDB item."""
    return {str(name): to_dynamodb(value) for name, value in item.items()}
