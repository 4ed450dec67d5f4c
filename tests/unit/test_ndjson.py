"""NDJSON encoding shared by the object sinks."""

import json

import orjson

from streamfn.connectors.shared.ndjson import encode_ndjson


def test_integers_beyond_64_bits_are_written() -> None:
    big = 49590338271490256608559692538361571095921575989136588898  # a Kinesis sequence number
    lines = encode_ndjson([{"seq": big}, {"seq": 1}, b"raw"]).splitlines()
    assert [json.loads(line)["seq"] for line in lines[:2]] == [big, 1]
    assert lines[2] == b"raw"


def test_plain_items_use_orjson_layout() -> None:
    assert encode_ndjson([{"a": 1}, [2]]) == orjson.dumps({"a": 1}) + b"\n" + orjson.dumps([2]) + b"\n"
