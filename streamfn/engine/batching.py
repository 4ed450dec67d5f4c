"""Grouping one shard's records into batches: by count, by bytes, by batching window.

The window starts when the batcher is asked for the next batch, i.e. after the previous
invocation finished (Lambda's rule for streams). Pending bounds recorded before a crash
are replayed first, so a batch whose output may already exist is formed again exactly.
"""

from __future__ import annotations

import operator
import time
from collections import deque
from collections.abc import Callable

import msgspec

from ..protocols.source import ShardReader
from ..records import Position, Record

RecordFilter = Callable[[Record], bool]
_data = operator.attrgetter("data")

#: How long one read may wait for a first record when no batching window is set. Short enough
#: that an idle shard notices a stop request promptly; readers poll cheaply underneath.
IDLE_WAIT = 0.5
#: How long later reads wait once a read came back empty (the shard is known idle): a record that
#: arrives still ends the wait at once, and a stop cancels it; only idle wakeups become rarer.
IDLE_WAIT_AGAIN = 5.0


class BatchLimits(msgspec.Struct, frozen=True):
    max_records: int = 100
    max_bytes: int = 6 * 1024 * 1024
    window: float = 0.0


class Unit(msgspec.Struct, frozen=True, gc=False):
    """What the batcher hands on: records to handle, and how far the checkpoint may then move.

    ``through`` is at or past the last record: records the filter skipped after it are done
    too. ``records`` may be empty when everything read was filtered out.
    """

    records: list[Record]
    through: Position
    shard_end: bool
    #: The next record belongs to a later tumbling window: this batch closes its window.
    window_closed: bool = False
    #: Formed again from bounds recorded before a restart: its object may exist and must be
    #: overwritten, even if this time the batch yields no output.
    replayed: bool = False


class Batcher:
    """Turns a shard reader's output into batches, one at a time."""

    def __init__(
        self,
        reader: ShardReader,
        limits: BatchLimits,
        *,
        accept: RecordFilter | None = None,
        replay: deque[tuple[Position, Position]] | None = None,
        tumbling_window: float = 0.0,
    ) -> None:
        self._reader = reader
        self._limits = limits
        self._accept = accept
        self._replay = replay if replay is not None else deque()
        self._buffer: list[Record] = []
        self._offset = 0
        self._shard_end = False
        self._replaying = False  # in the middle of forming a recorded batch: it must be completed
        self._window_size = tumbling_window
        self._window_closed = False
        self._replayed = False
        self._idle_wait = IDLE_WAIT
        self.behind_ms: float | None = None
        #: Records skipped by the filter, and records the source's retention removed before they
        #: were read: counts since the caller last took them (``take_counts``).
        self.filtered = 0
        self.trimmed = 0

    async def next(self) -> Unit | None:
        """The next batch, or None when nothing arrived within the wait (the shard is caught up)."""
        window = self._limits.window
        deadline = time.monotonic() + window
        self._window_closed = False
        self._replayed = False
        records: list[Record] = []
        through: Position | None = None
        nbytes = 0
        while True:
            nbytes, through, full = self._take(records, nbytes, through)
            if full or (self._shard_end and self._offset >= len(self._buffer)):
                break
            have = (bool(records) or through is not None) and not self._replaying
            if window <= 0:
                if have:
                    break
                wait = self._idle_wait
            else:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    if have:
                        break
                    if not self._replaying:
                        return None
                    wait = IDLE_WAIT
            result = await self._reader.read(self._limits.max_records, wait)
            self._refill(result.records)
            self._shard_end = self._shard_end or result.shard_end
            if result.behind_ms is not None:
                self.behind_ms = result.behind_ms
            self.trimmed += result.trimmed
            if window <= 0 and not result.records and not have and not self._shard_end and not self._replaying:
                if not self._window_size:  # a tumbling window's end needs its periodic check
                    self._idle_wait = IDLE_WAIT_AGAIN
                return None
            self._idle_wait = IDLE_WAIT
        if self._offset >= len(self._buffer) and self._buffer:
            self._buffer, self._offset = [], 0  # nothing kept alive for an idle shard
        if through is None:
            return Unit([], Position(-1), True) if self._shard_end else None
        return Unit(records, through, self._shard_end and not self._buffer, self._window_closed, self._replayed)

    def take_counts(self) -> tuple[int, int]:
        """(filtered, trimmed) since the last call: each lane's batcher adds its own to the shard's."""
        counts = (self.filtered, self.trimmed)
        self.filtered = self.trimmed = 0
        return counts

    def window_start(self, record: Record) -> float:
        """The tumbling window a record belongs to, by its arrival time."""
        size = self._window_size
        return record.arrival_time // size * size

    def _refill(self, fresh: list[Record]) -> None:
        if not fresh:
            return
        if self._offset >= len(self._buffer):
            self._buffer = fresh
        else:
            self._buffer = self._buffer[self._offset :] + fresh
        self._offset = 0

    def _take(self, records: list[Record], nbytes: int, through: Position | None) -> tuple[int, Position | None, bool]:
        """Move buffered records into ``records``; say whether the batch is full."""
        if self._replay:
            head = self._buffer[self._offset] if self._offset < len(self._buffer) else None
            first = self._replay[0][0]
            if head is None or head.position >= first or (records and records[0].position >= first):
                return self._take_replay(records, nbytes, through)
            # Records before the next recorded batch form ordinary batches that must end before it.
            return self._take_each(records, nbytes, through, before=first)
        limits = self._limits
        buffer, start = self._buffer, self._offset
        room = limits.max_records - len(records)
        if self._accept is None and not self._window_size:
            chunk = buffer[start : start + room]
            size = sum(map(len, map(_data, chunk)))
            if nbytes + size > limits.max_bytes:
                return self._take_each(records, nbytes, through)
            if chunk:
                records.extend(chunk)
                self._offset = start + len(chunk)
                through = chunk[-1].position
            return nbytes + size, through, len(records) >= limits.max_records
        return self._take_each(records, nbytes, through)

    def _take_each(
        self, records: list[Record], nbytes: int, through: Position | None, before: Position | None = None
    ) -> tuple[int, Position | None, bool]:
        limits, accept, buffer = self._limits, self._accept, self._buffer
        while self._offset < len(buffer):
            record = buffer[self._offset]
            if before is not None and record.position >= before:
                return nbytes, through, True
            if accept is not None and not accept(record):
                self.filtered += 1
                self._offset += 1
                through = record.position
                continue
            if self._window_size and records and self.window_start(record) != self.window_start(records[0]):
                self._window_closed = True
                return nbytes, through, True
            size = len(record.data)
            if records and nbytes + size > limits.max_bytes:
                return nbytes, through, True
            records.append(record)
            nbytes += size
            self._offset += 1
            through = record.position
            if len(records) >= limits.max_records:
                return nbytes, through, True
        return nbytes, through, False

    def _take_replay(
        self, records: list[Record], nbytes: int, through: Position | None
    ) -> tuple[int, Position | None, bool]:
        """Form the recorded batch exactly, up to its last record, whatever the limits say now."""
        last = self._replay[0][1]
        buffer = self._buffer
        while self._offset < len(buffer):
            record = buffer[self._offset]
            position = record.position
            if position > last:
                self._replay.popleft()
                self._replaying = False
                return nbytes, through, True
            self._replaying = True
            self._replayed = True
            self._offset += 1
            through = position
            if self._accept is not None and not self._accept(record):
                self.filtered += 1
                continue
            records.append(record)
            nbytes += len(record.data)
            if position == last:
                self._replay.popleft()
                self._replaying = False
                return nbytes, through, True
        return nbytes, through, False
