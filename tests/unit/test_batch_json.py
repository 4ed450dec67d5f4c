"""``Batch.json()`` decodes a batch in one call, and gives exactly what ``record.json()`` gives each record."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfn.records import Batch, Record

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

#: Bytes that are JSON, almost JSON, or not JSON at all: pretty-printed, padded, several values
#: on a line, blank, broken UTF-8 (integers beyond 64 bits: see the last test).
record_bytes = st.one_of(
    json_values.map(orjson.dumps),
    json_values.map(lambda v: orjson.dumps(v, option=orjson.OPT_INDENT_2)),
    json_values.map(lambda v: b"  " + orjson.dumps(v) + b" \r"),
    st.sampled_from([b"", b" ", b"1 2", b"{}{}", b"[1,", b"\xff", b'"\\ud800"', b"nul", b"1e999", b"-0", b"\n1"]),
    st.binary(max_size=12),
)


def batch_of(datas: list[bytes]) -> Batch:
    return Batch("s", [Record("s", i, "k", data, 0.0) for i, data in enumerate(datas, 1)])


def one_by_one(datas: list[bytes]) -> list[Any] | type[orjson.JSONDecodeError]:
    try:
        return [orjson.loads(data) for data in datas]
    except orjson.JSONDecodeError:
        return orjson.JSONDecodeError


@settings(max_examples=400, deadline=None)
@given(st.lists(record_bytes, max_size=6))
def test_batch_json_is_record_json_of_each_record(datas: list[bytes]) -> None:
    expected = one_by_one(datas)
    if expected is orjson.JSONDecodeError:
        with pytest.raises(orjson.JSONDecodeError):
            batch_of(datas).json()
    else:
        got = batch_of(datas).json()
        assert orjson.dumps(got) == orjson.dumps(expected)  # -0.0, NaN-free floats: compared as JSON
        assert [type(v) for v in got] == [type(v) for v in expected]


def test_a_batch_of_one_line_records_decodes_them_all_at_once() -> None:
    datas = [orjson.dumps({"n": i, "s": "x" * 200}) for i in range(1000)]
    assert batch_of(datas).json() == [{"n": i, "s": "x" * 200} for i in range(1000)]
    assert batch_of([]).json() == []


def test_integers_beyond_64_bits_stay_integers() -> None:
    """The one documented difference: orjson (``record.json()``) makes them floats, losing digits."""
    big = 2**70 + 1
    assert batch_of([str(big).encode(), b"1"]).json() == [big, 1]
    assert batch_of([str(big).encode()]).records[0].json() == float(big)
