"""Parallelization factor: a shard's records spread over lanes by partition key, and the
checkpoint watermark below which every lane is done.

Records of one partition key always land in the same lane, so per-key order holds while
different keys run side by side; the shard checkpoint never passes a record still in flight.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import deque

from ..protocols.source import ReadResult, ShardReader
from ..records import Position, Record


def lane_of(partition_key: str, lanes: int) -> int:
    """A stable lane for a key (crc32: the same in every process and run, unlike ``hash``)."""
    return zlib.crc32(partition_key.encode()) % lanes


class Watermark:
    """The highest position at or below which every dispatched record is done.

    Records are dispatched in shard order, each to one lane; lanes finish their own records in
    order, so a record is done once its lane's progress reached it.
    """

    def __init__(self, lanes: int, start: Position | None) -> None:
        self._order: deque[tuple[Position, int]] = deque()
        self._done: list[Position | None] = [None] * lanes
        self._single = lanes == 1  # one lane finishes records in shard order: its progress is the watermark
        self.position = start  # never moves back: records at or below it are not dispatched

    def dispatched(self, position: Position, lane: int) -> None:
        self._order.append((position, lane))

    def lane_done(self, lane: int, position: Position) -> Position | None:
        """Record a lane's progress; return the new watermark if it moved (always, with one lane)."""
        if self._single:
            self.position = position
            return position
        self._done[lane] = position
        moved = False
        order, done = self._order, self._done
        while order:
            head, head_lane = order[0]
            progress = done[head_lane]
            if progress is None or head > progress:
                break
            order.popleft()
            self.position = head
            moved = True
        return self.position if moved else None

    @property
    def in_flight(self) -> int:
        return len(self._order)


class LaneQueue(ShardReader):
    """A lane's bounded inbox, read through the ShardReader interface by the lane's batcher."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._records: deque[Record] = deque()
        self._arrived = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._ended = False

    def put(self, record: Record) -> None:
        self._records.append(record)
        self._arrived.set()
        if len(self._records) >= self.capacity:
            self._drained.clear()

    def end(self) -> None:
        """No record will follow: the shard ended."""
        self._ended = True
        self._arrived.set()

    async def has_room(self) -> None:
        await self._drained.wait()

    async def read(self, max_records: int, wait: float) -> ReadResult:
        if not self._records and not self._ended:
            self._arrived.clear()
            try:
                async with asyncio.timeout(wait):
                    await self._arrived.wait()
            except TimeoutError:
                pass
        records = self._records
        count = min(max_records, len(records))
        taken = [records.popleft() for _ in range(count)]
        if len(records) < self.capacity:
            self._drained.set()
        return ReadResult(taken, shard_end=self._ended and not records)

    async def close(self) -> None:
        return None
