"""The checkpoint-store protocol: per shard, where processing resumes after a restart."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

import msgspec

from ..records import Position

if TYPE_CHECKING:
    from ..components import BuildContext
    from .assignment import Assigner
    from .source import Source, StartingPosition


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


def advance(previous: Checkpoint | None, checkpoint: Checkpoint) -> Checkpoint:
    """``checkpoint``, carrying the pending bounds of ``previous`` it has not passed yet.

    Every store keeps pending bounds this way: ``save`` never loses a recorded batch that may
    still be replayed, and drops those the checkpoint has moved past (all of them at SHARD_END).
    """
    pending = previous.pending if previous else ()
    if checkpoint.shard_end:
        pending = ()
    elif pending and checkpoint.position is not None:
        pending = tuple(bounds for bounds in pending if bounds[1] > checkpoint.position)
    if pending != checkpoint.pending:
        checkpoint = msgspec.structs.replace(checkpoint, pending=pending)
    return checkpoint


def with_pending(previous: Checkpoint | None, first: Position, last: Position) -> Checkpoint | None:
    """``previous`` with the batch [first, last] recorded as pending; None if it already is."""
    previous = previous or Checkpoint()
    if (first, last) in previous.pending:
        return None
    return msgspec.structs.replace(previous, pending=(*previous.pending, (first, last)))


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

    Subclass it to inherit the defaults of the optional members (those with a body).
    """

    async def open(self) -> None: ...

    async def load(self, shard_id: str) -> Checkpoint | None: ...

    async def save(self, shard_id: str, checkpoint: Checkpoint) -> None: ...

    def save_now(self, shard_id: str, checkpoint: Checkpoint) -> bool:
        """``save`` without a coroutine, for a store that keeps saves in memory until its flush:
        True if ``checkpoint`` was taken (as ``save`` would take it); False: call ``save`` (the
        default, and what a store does once its writes fail). Called once per batch."""
        return False

    async def record_pending(self, shard_id: str, first: Position, last: Position) -> None: ...

    async def flush(self) -> None: ...

    async def close(self) -> None: ...

    def starting_position(self, shard_id: str) -> StartingPosition | None:
        """Where a shard without checkpoint starts when the store says so (a lease reset by
        ``checkpoints reset``); None: the pipeline's starting position."""
        return None

    def assigner(self, source: Source) -> Assigner | None:
        """The assigner that comes with this store (the lease table's), reading ``source``'s
        shards; None: every shard runs in this worker."""
        return None

    async def bind(self, source: Source) -> None:
        """Check, once both are open, that these checkpoints belong to ``source`` (the local
        log's identity); raise ``StateMismatchError`` if not."""
        return None

    async def lease_owners(self) -> dict[str, str] | None:
        """Which worker holds each shard's lease, for a store that keeps leases (status)."""
        return None

    def at_least_once(self) -> str | None:
        """Why output after a crash is only at-least-once with this store (a loss its config
        accepted, exported as a metric); None: a restart overwrites a batch's output exactly."""
        return None


class CheckpointConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    """A checkpoint store's config: its subclass sets ``tag`` (the ``type`` in pipeline files)."""

    #: The only source ``type`` this store works with (Kafka's offsets), if any.
    source_type: ClassVar[str | None] = None

    def window_state_problem(self) -> str | None:
        """Why this store, as configured, cannot keep a tumbling window's state with the checkpoint
        (a pipeline with ``tumbling_window`` is then refused); None: it can."""
        return None

    def build(self, ctx: BuildContext) -> CheckpointStore:
        raise NotImplementedError

    def local_file(self, ctx: BuildContext) -> Path | None:
        """The file on this machine the store keeps its checkpoints in, if it is one: a running
        daemon holds a run lock beside it, so that offline edits refuse while it runs."""
        return None
