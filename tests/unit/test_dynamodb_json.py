"""DynamoDB JSON to plain values and back."""

from __future__ import annotations

import base64
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfn.connectors.dynamodb.dynamodb_json import from_dynamodb, item_from_dynamodb, item_to_dynamodb, to_dynamodb

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.text(max_size=20),
                    st.binary(max_size=20), st.floats(allow_nan=False, allow_infinity=False))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=5), inner, max_size=4)),
                      max_leaves=12)


@given(values)
def test_round_trip(value: Any) -> None:
    assert from_dynamodb(to_dynamodb(value)) == value


def test_stream_image_from_raw_json() -> None:
    image: dict[str, Any] = {
             "id": {"S": "a"}, "n": {"N": "10"}, "f": {"N": "1.5"}, "b": {"B": base64.b64encode(b"\x01").decode()},
             "ok": {"BOOL": True}, "none": {"NULL": True}, "l": {"L": [{"N": "1"}, {"S": "x"}]},
             "m": {"M": {"k": {"SS": ["a", "b"]}}}, "ns": {"NS": ["1", "2.5"]},
             "bs": {"BS": [base64.b64encode(b"z").decode()]}}
    assert item_from_dynamodb(image) == {"id": "a", "n": 10, "f": 1.5, "b": b"\x01", "ok": True, "none": None,
                                         "l": [1, "x"], "m": {"k": {"a", "b"}}, "ns": {1, 2.5}, "bs": {b"z"}}
    assert item_from_dynamodb({"n": {"N": "1.5"}}, decimal=True) == {"n": Decimal("1.5")}
    assert item_from_dynamodb(None) == {}


def test_serializer_types_and_refusals() -> None:
    assert item_to_dynamodb({"s": {"b", "a"}, "n": {2, 1}, "d": Decimal("0.1")}) == {
        "s": {"SS": ["a", "b"]}, "n": {"NS": ["1", "2"]}, "d": {"N": "0.1"}}
    assert to_dynamodb(True) == {"BOOL": True}  # not N: bool is an int subclass
    for bad in (float("nan"), set(), {1, "a"}, object()):
        with pytest.raises((TypeError, ValueError)):
            to_dynamodb(bad)
    with pytest.raises(ValueError):
        from_dynamodb({"X": 1})
