"""What ``streamfn checkpoints`` shows and changes, whatever the store: rows, planned changes, targets."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from ...errors import CheckpointError
from ...protocols.checkpoint import Checkpoint


class Row(msgspec.Struct, frozen=True, kw_only=True):
    """One shard in ``checkpoints show``."""

    shard_id: str
    #: The last handled sequence, ``none`` (never checkpointed) or ``SHARD_END``.
    checkpoint: str
    #: Who runs the shard now (a lease owner, a group member), ``-`` if nobody is known to.
    held_by: str = "-"
    detail: str = ""


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """One shard's checkpoint before and after an edit (printed as such by ``--dry-run``)."""

    shard_id: str
    before: str
    after: str


class Target(msgspec.Struct, frozen=True, kw_only=True):
    """Where an edit moves shards: a starting position, a time, or (``set``) one sequence."""

    #: ``trim_horizon``, ``latest``, ``at_timestamp``, ``sequence``, or ``start`` (the pipeline's
    #: ``starting_position``: the checkpoint is forgotten).
    kind: str
    timestamp: float | None = None
    sequence: int | None = None

    def __post_init__(self) -> None:
        if self.sequence is not None and self.sequence < 0:
            raise CheckpointError(f"sequence {self.sequence} is negative: sequences start at 0")

    def describe(self) -> str:
        if self.kind == "at_timestamp":
            return f"the first record at or after {self.timestamp}"
        if self.kind == "sequence":
            return f"after sequence {self.sequence}"
        return {"start": "the pipeline's starting_position"}.get(self.kind, self.kind)


def describe(checkpoint: Checkpoint | None) -> str:
    """A checkpoint as one short word for tables and change lists."""
    if checkpoint is None:
        return "none"
    if checkpoint.shard_end:
        return "SHARD_END"
    if checkpoint.position is None:
        return "none"
    position = checkpoint.position
    shown = str(position.sequence) + (f":{position.sub_sequence}" if position.sub_sequence else "")
    return shown + (f" (+{len(checkpoint.pending)} pending)" if checkpoint.pending else "")


def render_rows(rows: Sequence[Row]) -> str:
    header = ("SHARD", "CHECKPOINT", "HELD BY", "")
    lines = [header] + [(r.shard_id, r.checkpoint, r.held_by, r.detail) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def render_changes(changes: Sequence[Change]) -> str:
    """One line per shard: ``shard: before -> after`` (before left out when the store did not say)."""
    return "\n".join(f"  {c.shard_id}: " + (f"{c.before} -> " if c.before else "-> ") + c.after for c in changes)
