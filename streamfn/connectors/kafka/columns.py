"""A Kafka fetch as columns: the engine gets a columnar ``Batch``, not a ``Record`` per message.

aiokafka parses each message into a record object (handed over as it is: ``parsed_records``).
The source reads the fields it needs into columns (``Fetched.of``) and drops those objects at
once: the garbage collector tracks them, and a full feed of them (10,000 per partition) would make
every collection walk them. Values and offsets are the batch's data and sequences; partition keys,
arrival times and ``attributes`` are computed from the raw columns only when read, one element at
a time for the engine's look at a batch's first record, or whole for a handler that iterates.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, Mapping, Sequence, ValuesView
from functools import partial
from typing import Any, overload

import msgspec

from ...records import Batch, LazyColumn, Record, join_sequences

_TIMESTAMP_NAMES = {0: "CREATE_TIME", 1: "LOG_APPEND_TIME"}


class KafkaAttributes(msgspec.Struct, frozen=True, gc=False):
    """A Kafka record's ``attributes``: a read-only mapping of ``topic``, ``partition``, ``key`` (the
    raw bytes or None), ``headers`` (the consumer's tuple of ``(name, value)`` pairs) and
    ``timestamp_type``.

    A struct rather than a dict: ~40 % cheaper to build per record, and invisible to the garbage
    collector like the Record holding it. It reads like the dict it replaces (``[]``, ``get``,
    ``in``, ``keys``/``items``, ``dict(...)``, ``==`` with a dict).
    """

    topic: str
    partition: int
    key: bytes | None
    headers: Any
    timestamp_type: str

    def __getitem__(self, name: str) -> Any:
        if name in _ATTRIBUTE_NAMES:
            return getattr(self, name)
        raise KeyError(name)

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name) if name in _ATTRIBUTE_NAMES else default

    def __contains__(self, name: object) -> bool:
        return name in _ATTRIBUTE_NAMES

    def __iter__(self) -> Iterator[str]:
        return iter(_ATTRIBUTE_NAMES)

    def __len__(self) -> int:
        return len(_ATTRIBUTE_NAMES)

    def keys(self) -> KeysView[str]:
        return KeysView(self)

    def items(self) -> ItemsView[str, Any]:
        return ItemsView(self)

    def values(self) -> ValuesView[Any]:
        return ValuesView(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    def __hash__(self) -> int:
        return hash(msgspec.structs.astuple(self))


_ATTRIBUTE_NAMES = ("topic", "partition", "key", "headers", "timestamp_type")
Mapping.register(KafkaAttributes)


def _key_text(key: bytes | None) -> str:
    """A record's partition key: the Kafka key as text (undecodable bytes replaced), "" for none."""
    return "" if key is None else key.decode("utf-8", "replace")


def _arrival(timestamp: int) -> float:
    """Epoch seconds of a Kafka timestamp in milliseconds (0.0 for none: -1)."""
    return timestamp / 1000.0 if timestamp > 0 else 0.0


def _all_keys(keys: Sequence[bytes | None]) -> list[str]:
    return [_key_text(key) for key in keys]


def _all_arrivals(stamps: Sequence[int]) -> list[float]:
    if stamps and min(stamps) > 0:
        return [stamp / 1000.0 for stamp in stamps]
    return [_arrival(stamp) for stamp in stamps]


class KeyColumn(LazyColumn):
    """Partition keys decoded from the raw Kafka keys when read; one key read alone decodes one."""

    __slots__ = ("_raw",)

    def __init__(self, raw: Sequence[bytes | None]) -> None:
        super().__init__(partial(_all_keys, raw), len(raw))
        self._raw = raw

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> KeyColumn: ...
    def __getitem__(self, index: int | slice) -> str | KeyColumn:
        if isinstance(index, slice):
            return KeyColumn(self._raw[index])
        return _key_text(self._raw[index])


class ArrivalColumn(LazyColumn):
    """Arrival times (epoch seconds) from Kafka's millisecond timestamps, converted when read."""

    __slots__ = ("_stamps",)

    def __init__(self, stamps: Sequence[int]) -> None:
        super().__init__(partial(_all_arrivals, stamps), len(stamps))
        self._stamps = stamps

    @overload
    def __getitem__(self, index: int) -> float: ...
    @overload
    def __getitem__(self, index: slice) -> ArrivalColumn: ...
    def __getitem__(self, index: int | slice) -> float | ArrivalColumn:
        if isinstance(index, slice):
            return ArrivalColumn(self._stamps[index])
        return _arrival(self._stamps[index])


class _RawAttributes(msgspec.Struct, frozen=True, gc=False):
    """What a run of one partition's records needs to build their ``KafkaAttributes``."""

    topic: str
    partition: int
    keys: Sequence[bytes | None]
    headers: Sequence[Any]
    types: Sequence[int]

    def one(self, index: int) -> KafkaAttributes:
        return KafkaAttributes(self.topic, self.partition, self.keys[index], self.headers[index],
                               _TIMESTAMP_NAMES.get(self.types[index], "NO_TIMESTAMP_TYPE"))

    def all(self) -> list[KafkaAttributes]:
        names, topic, partition = _TIMESTAMP_NAMES, self.topic, self.partition
        return [KafkaAttributes(topic, partition, key, headers, names.get(kind, "NO_TIMESTAMP_TYPE"))
                for key, headers, kind in zip(self.keys, self.headers, self.types, strict=True)]

    def part(self, index: slice) -> _RawAttributes:
        return _RawAttributes(self.topic, self.partition, self.keys[index], self.headers[index], self.types[index])


class AttributeColumn(LazyColumn):
    """Each record's ``KafkaAttributes``, built when read; one read alone builds one."""

    __slots__ = ("_raw",)

    def __init__(self, raw: _RawAttributes) -> None:
        super().__init__(raw.all, len(raw.keys))
        self._raw = raw

    @overload
    def __getitem__(self, index: int) -> KafkaAttributes: ...
    @overload
    def __getitem__(self, index: slice) -> AttributeColumn: ...
    def __getitem__(self, index: int | slice) -> KafkaAttributes | AttributeColumn:
        if isinstance(index, slice):
            return AttributeColumn(self._raw.part(index))
        return self._raw.one(index)


class Fetched:
    """Consecutive messages of one partition as columns, in offset order (see the module doc)."""

    __slots__ = ("datas", "headers", "keys", "offsets", "partition", "stamps", "topic", "types")

    def __init__(self, topic: str, partition: int, offsets: Sequence[int], datas: list[bytes],
                 keys: list[bytes | None], stamps: list[int], headers: list[Any], types: list[int]) -> None:
        self.topic, self.partition = topic, partition
        self.offsets, self.datas, self.keys = offsets, datas, keys
        self.stamps, self.headers, self.types = stamps, headers, types

    @classmethod
    def of(cls, messages: Sequence[Any], topic: str, partition: int) -> Fetched:
        """The columns of messages of ``topic``'s ``partition``, offsets increasing: aiokafka's parsed
        records (``parsed_records``) or ``ConsumerRecord``s alike. A None value becomes b""."""
        if not messages:
            return cls(topic, partition, range(0), [], [], [], [], [])
        # A comprehension per field: ~25 ns a message each, against ~50 for attrgetter or zip (whose
        # attribute reads are not specialized).
        datas = [m.value for m in messages]
        if not all(datas):  # a None value (or an empty one) is rare
            datas = [b"" if value is None else value for value in datas]
        keys = [m.key for m in messages]
        stamps = [m.timestamp for m in messages]
        headers = [m.headers for m in messages]
        # Parsed records hold headers as lists, which the collector tracks: keep tuples, and share
        # one empty tuple in the common case of no headers at all.
        headers = list(map(tuple, headers)) if any(headers) else [()] * len(headers)
        types = [m.timestamp_type for m in messages]
        first, last = messages[0].offset, messages[-1].offset
        # Offsets increase within a fetch: equal spans mean no gap (compaction and transaction
        # markers leave gaps, which keep the offsets as a list).
        offsets = range(first, last + 1) if last - first + 1 == len(messages) else [m.offset for m in messages]
        return cls(topic, partition, offsets, datas, keys, stamps, headers, types)

    def __len__(self) -> int:
        return len(self.datas)

    def part(self, start: int, stop: int) -> Fetched:
        """Messages ``start`` to ``stop`` (exclusive), as their own columns."""
        cut = slice(start, stop)
        return Fetched(self.topic, self.partition, self.offsets[cut], self.datas[cut], self.keys[cut],
                       self.stamps[cut], self.headers[cut], self.types[cut])

    @classmethod
    def join(cls, parts: Sequence[Fetched]) -> Fetched:
        """One run of consecutive parts (of one partition)."""
        if len(parts) == 1:
            return parts[0]
        offsets = join_sequences([part.offsets for part in parts])
        return cls(parts[0].topic, parts[0].partition, offsets, _concat([part.datas for part in parts]),
                   _concat([part.keys for part in parts]), _concat([part.stamps for part in parts]),
                   _concat([part.headers for part in parts]), _concat([part.types for part in parts]))

    def batch(self, shard_id: str) -> Batch:
        """These messages as a columnar batch of ``shard_id``; nothing but the columns is made."""
        keys = self.keys
        return Batch.from_columns(
            shard_id, self.datas, self.offsets, KeyColumn(keys), ArrivalColumn(self.stamps), None,
            AttributeColumn(_RawAttributes(self.topic, self.partition, keys, self.headers, self.types)),
        )


def _concat(columns: list[list[Any]]) -> list[Any]:
    joined: list[Any] = []
    for column in columns:
        joined += column  # a block copy per part, no per-element iteration
    return joined


def to_batch(shard_id: str, messages: Sequence[Any]) -> Batch:
    """A columnar batch of aiokafka ConsumerRecords (one partition, in order)."""
    topic, partition = (messages[0].topic, messages[0].partition) if messages else ("", 0)
    return Fetched.of(messages, topic, partition).batch(shard_id)


def to_records(shard_id: str, messages: Sequence[Any]) -> list[Record]:
    """streamfn Records from aiokafka ConsumerRecords (a None key/value becomes "" / b"")."""
    return to_batch(shard_id, messages).records
