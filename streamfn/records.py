"""Records, batches and shard positions: the small value types every part of streamfn shares."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import chain, pairwise, repeat
from typing import Any, overload

import msgspec
import orjson

_decode_lines = msgspec.json.Decoder().decode_lines


class Position(msgspec.Struct, frozen=True, order=True):
    """A place in one shard: a record's sequence and, for KPL sub-records, its sub-sequence.

    Ordering is numeric on ``(sequence, sub_sequence)``; Kinesis sequence strings are
    parsed to ``int`` once at the source so they never compare as text.
    """

    sequence: int
    sub_sequence: int = 0

    def __str__(self) -> str:
        return position_text(self.sequence, self.sub_sequence)

    @classmethod
    def parse(cls, text: str) -> Position:
        """The position :func:`position_text` spells as ``text`` (leading zeros allowed: DynamoDB
        Streams pads its sequence numbers to 21-40 digits); ``ValueError`` for anything else."""
        match = _POSITION_TEXT.fullmatch(text)
        if match is None:
            raise ValueError(f"not a position: {text!r} (expected digits, or digits:digits)")
        return cls(int(match.group(1)), int(match.group(2) or 0))


#: Up to 128-bit decimal sequence numbers, and a KPL sub-sequence.
_POSITION_TEXT = re.compile(r"(\d{1,40})(?::(\d{1,20}))?")


def position_text(sequence: int, sub_sequence: int = 0) -> str:
    """The one text form of a position, for logs, status, errors and Lambda's ``itemIdentifier``:
    ``sequence``, or ``sequence:sub`` for a KPL sub-record. Object keys use a sortable form
    (``connectors/shared/keys.py``) and stores their own, kept as written for old state."""
    return f"{sequence}:{sub_sequence}" if sub_sequence else str(sequence)


class Record(msgspec.Struct, frozen=True, gc=False):
    """One record of one shard, as a handler sees it.

    ``sequence`` is numeric whatever the source (Kafka offset, local log sequence,
    Kinesis sequence number as a big int). ``attributes`` holds what only one source
    has: Kafka headers and topic, a DynamoDB Streams event, a Kinesis ``eventName``.
    """

    shard_id: str
    sequence: int
    partition_key: str
    data: bytes
    arrival_time: float
    sub_sequence: int = 0
    attributes: Mapping[str, Any] | None = None

    def json(self) -> Any:
        """The record's data parsed as JSON (raises ``orjson.JSONDecodeError`` if it is not)."""
        return orjson.loads(self.data)

    @property
    def position(self) -> Position:
        return Position(self.sequence, self.sub_sequence)

    @property
    def identifier(self) -> str:
        """The id a handler returns to report this record failed (Lambda's ``itemIdentifier``)."""
        return position_text(self.sequence, self.sub_sequence)


class Batch(Sequence[Record]):
    """Consecutive records of one shard (or one lane of it), handed to a handler in one call.

    Columnar: a source that reads records in bulk (the local log's blocks, a Kafka fetch) gives
    their columns (data, sequences, keys, arrival times) and ``Record`` objects are built only when
    the batch is indexed or iterated, once, then kept. ``json()``, ``data``, ``nbytes``, slicing
    and ``Batch.join`` read or cut the columns, so a handler that decodes the batch as a whole
    never makes a ``Record``, and the engine forms batches without touching records one by one.
    A batch made from a list of records keeps that list and derives the columns from it.
    """

    __slots__ = ("_arrivals", "_attributes", "_count", "_datas", "_keys", "_records", "_sequences", "_subs",
                 "shard_id")

    shard_id: str
    _count: int  # the number of records (len() is on every batch's path several times)
    _records: list[Record] | None  # None until built from the columns
    _datas: Sequence[bytes] | None  # None: no columns, the records are the batch
    _sequences: Sequence[int]
    _keys: Sequence[str]
    _arrivals: Sequence[float]
    _subs: Sequence[int] | None  # None: every sub-sequence is 0
    _attributes: Sequence[Mapping[str, Any] | None] | None  # None: no record has attributes

    def __init__(self, shard_id: str, records: Sequence[Record] = ()) -> None:
        self.shard_id = shard_id
        if type(records) is not list and isinstance(records, Batch):
            self._records, self._count = records._records, records._count
            self._datas, self._sequences, self._keys = records._datas, records._sequences, records._keys
            self._arrivals, self._subs, self._attributes = records._arrivals, records._subs, records._attributes
            return
        self._records = records if isinstance(records, list) else list(records)
        self._count = len(self._records)
        self._datas = None
        self._sequences = self._keys = self._arrivals = ()
        self._subs = self._attributes = None

    @classmethod
    def from_columns(
        cls,
        shard_id: str,
        datas: Sequence[bytes],
        sequences: Sequence[int],
        keys: Sequence[str],
        arrivals: Sequence[float],
        sub_sequences: Sequence[int] | None = None,
        attributes: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> Batch:
        """A batch over columns of equal length (``datas`` a list or a ``DataColumn``; ``sequences``
        may be a ``range`` for dense ones; ``sub_sequences`` and ``attributes`` None when every
        record has none). Nothing is copied."""
        batch = cls.__new__(cls)
        batch.shard_id = shard_id
        batch._records = None
        batch._count = len(datas)
        batch._datas, batch._sequences, batch._keys, batch._arrivals = datas, sequences, keys, arrivals
        batch._subs, batch._attributes = sub_sequences, attributes
        return batch

    @classmethod
    def join(cls, shard_id: str, parts: Sequence[Batch]) -> Batch:
        """One batch of ``parts`` in order: columns joined when every part has them, else records."""
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return cls(shard_id, [])
        if any(part._datas is None for part in parts):
            return cls(shard_id, [record for part in parts for record in part.records])
        columns = [part._columns() for part in parts]
        counts = [len(part[0]) for part in columns]
        datas = [part[0] for part in columns]
        return cls.from_columns(
            shard_id,
            DataColumn.join(datas) if all(isinstance(part, DataColumn) for part in datas)  # type: ignore[arg-type]
            else list(chain.from_iterable(datas)),
            join_sequences([part[1] for part in columns]),
            _join_column([part[2] for part in columns], counts),
            list(chain.from_iterable(part[3] for part in columns)),
            _join_optional([part[4] for part in columns], counts, 0),
            _join_optional([part[5] for part in columns], counts, None),
        )

    def _columns(self) -> tuple[Sequence[bytes], Sequence[int], Sequence[str], Sequence[float],
                                Sequence[int] | None, Sequence[Mapping[str, Any] | None] | None]:
        assert self._datas is not None
        return self._datas, self._sequences, self._keys, self._arrivals, self._subs, self._attributes

    @property
    def records(self) -> list[Record]:
        """The records as ``Record`` objects (built from the columns on first use, then kept)."""
        records = self._records
        if records is None:
            datas = self._datas
            assert datas is not None
            count = len(datas)
            records = self._records = list(map(
                Record, repeat(self.shard_id, count), self._sequences, self._keys, datas, self._arrivals,
                repeat(0, count) if self._subs is None else self._subs,
                repeat(None, count) if self._attributes is None else self._attributes,
            ))
        return records

    @overload
    def __getitem__(self, index: int) -> Record: ...
    @overload
    def __getitem__(self, index: slice) -> Batch: ...
    def __getitem__(self, index: int | slice) -> Record | Batch:
        datas = self._datas
        if isinstance(index, slice):
            if datas is None:
                assert self._records is not None
                return Batch(self.shard_id, self._records[index])
            start, stop, step = index.indices(len(datas))
            if step == 1:
                return self.cut(start, max(start, stop))
            part = Batch.from_columns(
                self.shard_id, list(datas)[index], self._sequences[index], self._keys[index], self._arrivals[index],
                None if self._subs is None else self._subs[index],
                None if self._attributes is None else self._attributes[index],
            )
            if self._records is not None:
                part._records = self._records[index]
            return part
        if self._records is not None or datas is None:
            return self.records[index]
        data = datas[index]  # raises IndexError as a list would
        return Record(
            self.shard_id, self._sequences[index], self._keys[index], data, self._arrivals[index],
            0 if self._subs is None else self._subs[index],
            None if self._attributes is None else self._attributes[index],
        )

    def cut(self, start: int, stop: int) -> Batch:
        """Records ``start`` to ``stop - 1`` (``0 <= start <= stop <= len``): a slice, made without a
        slice object (the batcher and readers cut on every batch)."""
        datas = self._datas
        if datas is None:
            assert self._records is not None
            return Batch(self.shard_id, self._records[start:stop])
        part = Batch.__new__(Batch)
        part.shard_id = self.shard_id
        part._count = stop - start
        part._datas = datas.cut(start, stop) if type(datas) is DataColumn else datas[start:stop]
        part._sequences = self._sequences[start:stop]
        keys = self._keys
        part._keys = keys.cut(start, stop) if type(keys) is LazyColumn else keys[start:stop]
        part._arrivals = self._arrivals[start:stop]
        part._subs = None if self._subs is None else self._subs[start:stop]
        part._attributes = None if self._attributes is None else self._attributes[start:stop]
        part._records = None if self._records is None else self._records[start:stop]
        return part

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __eq__(self, other: object) -> bool:
        """Equal to a batch or list holding equal records in the same order."""
        if isinstance(other, Batch):
            return self.shard_id == other.shard_id and self.records == other.records
        if isinstance(other, list):
            return self.records == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        if not len(self):
            return f"Batch({self.shard_id!r}, empty)"
        return f"Batch({self.shard_id!r}, {self.first.identifier}..{self.last.identifier}, n={len(self)})"

    @property
    def first(self) -> Record:
        return self[0]

    @property
    def last(self) -> Record:
        return self[-1]

    def position_at(self, index: int) -> Position:
        """The position of the record at ``index``, without building the record."""
        if self._datas is None:
            return self.records[index].position
        return Position(self._sequences[index], 0 if self._subs is None else self._subs[index])

    def arrival_at(self, index: int) -> float:
        """The arrival time of the record at ``index``, without building the record."""
        if self._datas is None:
            return self.records[index].arrival_time
        return self._arrivals[index]

    @property
    def nbytes(self) -> int:
        datas = self._datas
        if type(datas) is DataColumn:  # (not isinstance: a miss on an ABC is slow, and this is per batch)
            return datas.nbytes()
        return sum(map(len, self.data))

    def json(self) -> list[Any]:
        """Every record's data parsed as JSON, in order: the fast path for JSON streams.

        The records are joined into one newline-delimited buffer and decoded in one call
        (msgspec ``decode_lines``: ~1.5x faster than ``orjson.loads`` per 250 B record). Lines are
        decoded one by one, blank lines skipped and a line may hold several values, so the result
        maps one value to each record exactly when no record holds a newline, none is blank and
        the count matches; otherwise, or if a record does not parse, records are decoded one by
        one, giving ``record.json()``'s values and error (``orjson.JSONDecodeError``). One
        difference: an integer beyond 64 bits stays an ``int`` (orjson makes it a float).
        """
        column = self._datas
        if type(column) is DataColumn:
            values = column.json_lines()
            if values is not None:
                return values
            # Joining the same bytes and decoding them again would fail the same way: one by one.
            return list(map(orjson.loads, column))
        datas = self.data
        if len(datas) > 1:
            joined = b"\n".join(datas)
            if joined.count(b"\n") == len(datas) - 1 and all(map(bytes.strip, datas)):
                try:
                    values = _decode_lines(joined)
                except msgspec.DecodeError:
                    pass
                else:
                    if len(values) == len(datas):
                        return values
        return list(map(orjson.loads, datas))

    @property
    def data(self) -> list[bytes]:
        """Every record's data, in order (the column itself when the batch has a list: do not change it)."""
        datas = self._datas
        if datas is None:
            assert self._records is not None
            return [r.data for r in self._records]
        return datas if isinstance(datas, list) else list(datas)


class DataColumn(Sequence[bytes]):
    """Records' data stored back to back, one newline between two records, in one buffer per
    stored block (the local log's layout): ``bytes`` for a record are made only when asked for,
    and a run of records that are each one JSON line decodes in one call straight from the buffer.

    Each segment is ``(buffer, ends, lo, hi, lines)``: records ``lo..hi-1`` of a block whose record
    ``i`` spans ``buffer[ends[i-1] + 1 : ends[i]]`` (from 0 for the first), and whether every record
    of the block is one non-blank line (checked when it was written).
    """

    __slots__ = ("_length", "_segments")

    def __init__(self, segments: list[tuple[Any, Sequence[int], int, int, bool]], length: int | None = None) -> None:
        self._segments = segments
        self._length = sum(hi - lo for _, _, lo, hi, _ in segments) if length is None else length

    @classmethod
    def join(cls, columns: Sequence[DataColumn]) -> DataColumn:
        return cls([segment for column in columns for segment in column._segments])

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[bytes]: ...
    def __getitem__(self, index: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._length)
            if step != 1:
                return list(self)[index]
            return self.cut(start, max(start, stop))
        i = index + self._length if index < 0 else index
        if not 0 <= i < self._length:
            raise IndexError("record index out of range")
        for buffer, ends, lo, hi, _ in self._segments:
            if i < hi - lo:
                at = lo + i
                return bytes(buffer[ends[at - 1] + 1 if at else 0 : ends[at]])
            i -= hi - lo
        raise AssertionError("unreachable: the index was checked against the length")

    def cut(self, start: int, stop: int) -> DataColumn:
        """Records ``start`` to ``stop - 1`` (``0 <= start <= stop <= len``)."""
        segments = self._segments
        if len(segments) == 1:  # the common case, without a loop
            buffer, ends, lo, _, lines = segments[0]
            return DataColumn([(buffer, ends, lo + start, lo + stop, lines)], stop - start)
        kept = []
        for buffer, ends, lo, hi, lines in self._segments:
            count = hi - lo
            if stop > 0 and start < count:
                kept.append((buffer, ends, lo + max(start, 0), lo + min(stop, count), lines))
            start, stop = start - count, stop - count
        return DataColumn(kept, sum(hi - lo for _, _, lo, hi, _ in kept))

    def __iter__(self) -> Iterator[bytes]:
        for buffer, ends, lo, hi, _ in self._segments:
            begin = ends[lo - 1] + 1 if lo else 0
            for at in range(lo, hi):
                end = ends[at]
                yield bytes(buffer[begin:end])
                begin = end + 1

    def nbytes(self) -> int:
        """The records' bytes (separators not counted), from the offsets alone."""
        total = 0
        for _, ends, lo, hi, _ in self._segments:
            if hi > lo:
                total += ends[hi - 1] - (ends[lo - 1] + 1 if lo else 0) - (hi - lo - 1)
        return total

    def json_lines(self) -> list[Any] | None:
        """Each record's JSON value, decoded from the buffers in one call per segment, when every
        segment is made of one-line records and each line holds exactly one value; else None."""
        values: list[Any] = []
        for buffer, ends, lo, hi, lines in self._segments:
            if not lines:
                return None
            if hi > lo:
                try:
                    values += _decode_lines(buffer[ends[lo - 1] + 1 if lo else 0 : ends[hi - 1]])
                except msgspec.DecodeError:
                    return None
        return values if len(values) == self._length else None


def position_of(records: Sequence[Record], index: int) -> Position:
    """``records[index].position``, read from a columnar batch's columns without building a Record
    (building one would decode a lazy key column just to read a sequence)."""
    return records.position_at(index) if isinstance(records, Batch) else records[index].position


def arrival_of(records: Sequence[Record], index: int) -> float:
    """``records[index].arrival_time``, without building a Record from a columnar batch."""
    return records.arrival_at(index) if isinstance(records, Batch) else records[index].arrival_time


class LazyColumn(Sequence[Any]):
    """A column made only when first read: a source gives one for a field most handlers never
    look at (the local log's partition keys cost more to decode than the data). A slice is a view
    of its column until read (slicing is on every batch's path; making the column is not)."""

    __slots__ = ("_length", "_make", "_start", "_values", "_whole")

    def __init__(self, make: Callable[[], Sequence[Any]], length: int) -> None:
        self._make: Callable[[], Sequence[Any]] | None = make
        self._values: Sequence[Any] | None = None
        self._length = length
        #: For a slice not read yet: the column it was cut from, and where it starts there.
        self._whole: LazyColumn | None = None
        self._start = 0

    def values(self) -> Sequence[Any]:
        values = self._values
        if values is None:
            whole = self._whole
            if whole is not None:
                values = whole.values()[self._start : self._start + self._length]
                self._whole = None
            else:
                assert self._make is not None
                values = self._make()
                self._make = None  # what it closed over (a stored block's bytes) is released
            self._values = values
        return values

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> LazyColumn: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._length)
            if step == 1:
                return self.cut(start, max(start, stop))
            part = self.values()[index]
            return LazyColumn(lambda: part, len(part))
        return self.values()[index]

    def cut(self, start: int, stop: int) -> LazyColumn:
        """Values ``start`` to ``stop - 1`` (``0 <= start <= stop <= len``): a view until read."""
        view = LazyColumn.__new__(LazyColumn)
        view._make = None
        view._length = stop - start
        values = self._values
        if values is not None:
            view._values, view._whole, view._start = values[start:stop], None, 0
            return view
        view._values = None
        whole = self._whole
        view._whole, view._start = (self, start) if whole is None else (whole, self._start + start)
        return view

    def __iter__(self) -> Iterator[Any]:
        return iter(self.values())


def join_sequences(parts: list[Sequence[int]]) -> Sequence[int]:
    """Consecutive ranges stay one range; anything else becomes a list."""
    ranges = [part for part in parts if isinstance(part, range) and part.step == 1]
    if len(ranges) == len(parts) and all(a.stop == b.start for a, b in pairwise(ranges)):
        return range(ranges[0].start, ranges[-1].stop)
    return list(chain.from_iterable(parts))


def _join_optional(parts: list[Sequence[Any] | None], counts: list[int], default: Any) -> Sequence[Any] | None:
    """Optional columns joined (None when no part has one); see :func:`_join_column`."""
    if all(part is None for part in parts):
        return None
    return _join_column(parts, counts, default)


def _join_column(parts: Sequence[Sequence[Any] | None], counts: list[int], default: Any = None) -> Sequence[Any]:
    """Columns joined, a part without the column giving ``default`` per record. Lazy when any part
    is (a source's keys and attributes stay unmade through the batcher's joins)."""

    def joined() -> list[Any]:
        return list(chain.from_iterable(
            repeat(default, count) if part is None else part for part, count in zip(parts, counts, strict=True)))

    if any(isinstance(part, LazyColumn) for part in parts):
        return LazyColumn(joined, sum(counts))
    return joined()
