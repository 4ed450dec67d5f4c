"""The checkpoint-store protocol: per shard, where processing resumes after a restart."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import msgspec

from ..records import Position


class Checkpoint(msgspec.Struct, frozen=True):
    """A shard's durable progress.

    ``position`` is the last record whose handling and output are complete (None: nothing yet).
    ``shard_end`` marks a closed shard fully processed: its children may start.
    ``pending`` are the bounds of batches past ``position`` whose output may already be
    written; a restart forms exactly these batches again so object keys repeat.
    ``window_state`` is a tumbling window's state carried across a restart.
    """

    position: Position | None = None
    shard_end: bool = False
    pending: tuple[tuple[Position, Position], ...] = ()
    window_state: bytes | None = None


@runtime_checkable
class CheckpointStore(Protocol):
    """Durable per-shard checkpoints for one pipeline.

    Guarantees callers rely on:
    - ``load`` returns the last checkpoint saved *and flushed* (or None).
    - ``save`` may return before the write is durable; saves of one shard are applied in
      order, so a later save never loses to an earlier one. ``flush`` returns once every
      save made before it is durable.
    - ``record_pending`` is durable when it returns (it guards a sink write).
    - Any call may raise ``LeaseLostError``: the shard belongs to another worker now.
    """

    async def open(self) -> None: ...

    async def load(self, shard_id: str) -> Checkpoint | None: ...

    async def save(self, shard_id: str, checkpoint: Checkpoint) -> None: ...

    async def record_pending(self, shard_id: str, first: Position, last: Position) -> None: ...

    async def flush(self) -> None: ...

    async def close(self) -> None: ...
