"""KPL aggregation: one Kinesis record carrying many user records.

Layout: the magic ``F3 89 9A C2``, a protobuf ``AggregatedRecord``, then the MD5 of the protobuf
bytes. The schema is tiny, so it is parsed by hand::

    AggregatedRecord { repeated string partition_key_table = 1;
                       repeated string explicit_hash_key_table = 2;
                       repeated Record records = 3; }
    Record           { required uint64 partition_key_index = 1;
                       optional uint64 explicit_hash_key_index = 2;
                       required bytes data = 3;
                       repeated Tag tags = 4; }

A record with the magic but a wrong MD5 or a broken body is passed through whole, as the KCL
does. ``aggregate`` builds such records (tests, producers that want fewer PutRecords).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import msgspec

MAGIC = b"\xf3\x89\x9a\xc2"
_DIGEST = 16


class UserRecord(msgspec.Struct, frozen=True):
    """One user record of an aggregate; ``explicit_hash_key`` is a decimal string when set."""

    partition_key: str
    data: bytes
    explicit_hash_key: str | None = None


class _Malformed(Exception):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Malformed("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """``(field number, value)`` pairs; length-delimited values as bytes, varints as ints."""
    out: list[tuple[int, int | bytes]] = []
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            out.append((number, value))
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise _Malformed("truncated field")
            out.append((number, buf[pos:pos + length]))
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise _Malformed(f"wire type {wire}")
    if pos != end:
        raise _Malformed("truncated fixed field")
    return out


def is_aggregated(data: bytes) -> bool:
    """Cheap first test: the magic prefix (the MD5 check comes with ``deaggregate``)."""
    return data[:4] == MAGIC and len(data) > 4 + _DIGEST


def deaggregate(data: bytes) -> list[UserRecord] | None:
    """The user records of an aggregate, or None when ``data`` is not a valid one."""
    if not is_aggregated(data):
        return None
    body, digest = data[4:-_DIGEST], data[-_DIGEST:]
    if hashlib.md5(body, usedforsecurity=False).digest() != digest:
        return None
    try:
        keys: list[str] = []
        hash_keys: list[str] = []
        raw_records: list[bytes] = []
        for number, value in _fields(body):
            if not isinstance(value, bytes):
                continue
            if number == 1:
                keys.append(value.decode())
            elif number == 2:
                hash_keys.append(value.decode())
            elif number == 3:
                raw_records.append(value)
        records = []
        for raw in raw_records:
            pk_index: int | None = None
            ehk_index: int | None = None
            payload: bytes | None = None
            for number, value in _fields(raw):
                if number == 1 and isinstance(value, int):
                    pk_index = value
                elif number == 2 and isinstance(value, int):
                    ehk_index = value
                elif number == 3 and isinstance(value, bytes):
                    payload = value
            if pk_index is None or payload is None:
                raise _Malformed("record without partition key or data")
            records.append(UserRecord(keys[pk_index], payload,
                                      hash_keys[ehk_index] if ehk_index is not None else None))
    except (_Malformed, IndexError, UnicodeDecodeError):
        return None
    return records


def hash_key(record: UserRecord) -> int:
    """The 128-bit hash key Kinesis routes by: the explicit one, else MD5 of the partition key."""
    if record.explicit_hash_key is not None:
        return int(record.explicit_hash_key)
    return int.from_bytes(hashlib.md5(record.partition_key.encode(), usedforsecurity=False).digest(), "big")


def _put_varint(out: bytearray, value: int) -> None:
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def _put_bytes(out: bytearray, number: int, value: bytes) -> None:
    _put_varint(out, (number << 3) | 2)
    _put_varint(out, len(value))
    out += value


def aggregate(records: Sequence[UserRecord]) -> bytes:
    """One aggregated record holding ``records`` in order (the KPL wire format)."""
    keys: dict[str, int] = {}
    hash_keys: dict[str, int] = {}
    body = bytearray()
    encoded_records: list[bytes] = []
    for record in records:
        one = bytearray()
        _put_varint(one, 1 << 3)
        _put_varint(one, keys.setdefault(record.partition_key, len(keys)))
        if record.explicit_hash_key is not None:
            _put_varint(one, 2 << 3)
            _put_varint(one, hash_keys.setdefault(record.explicit_hash_key, len(hash_keys)))
        _put_bytes(one, 3, record.data)
        encoded_records.append(bytes(one))
    for key in keys:
        _put_bytes(body, 1, key.encode())
    for key in hash_keys:
        _put_bytes(body, 2, key.encode())
    for encoded in encoded_records:
        _put_bytes(body, 3, encoded)
    raw = bytes(body)
    return MAGIC + raw + hashlib.md5(raw, usedforsecurity=False).digest()
