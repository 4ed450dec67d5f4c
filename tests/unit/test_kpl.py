"""KPL de-aggregation: round trips, the MD5 check, malformed bodies, hash keys."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from streamfn.connectors.kinesis.kpl import MAGIC, UserRecord, aggregate, deaggregate, hash_key, is_aggregated

users = st.lists(
    st.builds(UserRecord, st.text(min_size=1, max_size=20), st.binary(max_size=300),
              st.one_of(st.none(), st.integers(0, 2**128 - 1).map(str))),
    min_size=1, max_size=30,
)


@given(users)
def test_round_trip(records: list[UserRecord]) -> None:
    data = aggregate(records)
    assert is_aggregated(data)
    assert deaggregate(data) == records


def test_known_bytes_from_the_wire_format() -> None:
    # Field 1 "pk" (table), field 3 record {1: 0, 3: b"hi"}; hand-assembled per the KPL proto.
    body = b"\x0a\x02pk" + b"\x1a\x06" + b"\x08\x00\x1a\x02hi"
    data = MAGIC + body + hashlib.md5(body).digest()
    assert deaggregate(data) == [UserRecord("pk", b"hi")]
    assert aggregate([UserRecord("pk", b"hi")]) == data


def test_bad_md5_or_body_is_not_an_aggregate() -> None:
    data = bytearray(aggregate([UserRecord("k", b"v")]))
    data[-1] ^= 1
    assert deaggregate(bytes(data)) is None
    body = b"\x1a\x02\x08\x05"  # a record pointing at partition key #5 that does not exist
    assert deaggregate(MAGIC + body + hashlib.md5(body).digest()) is None
    truncated = b"\x0a\x09pk"
    assert deaggregate(MAGIC + truncated + hashlib.md5(truncated).digest()) is None
    assert deaggregate(b'{"plain": "json"}') is None
    assert deaggregate(MAGIC + b"short") is None


def test_hash_key_is_md5_of_the_partition_key_unless_explicit() -> None:
    assert hash_key(UserRecord("a", b"")) == int(hashlib.md5(b"a").hexdigest(), 16)
    assert hash_key(UserRecord("a", b"", "42")) == 42
