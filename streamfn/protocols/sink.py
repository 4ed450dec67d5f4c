"""The sink protocol: where a batch's output goes, durably and idempotently."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import msgspec

from ..records import Position

if TYPE_CHECKING:
    from ..components import BuildContext


class SinkBatch(msgspec.Struct, frozen=True):
    """The output of one handled batch, with the bounds that make its keys deterministic.

    ``first`` and ``last`` are the positions of the first and last record the call covered;
    a replay of the same records yields the same bounds (the engine guarantees it), so a
    sink that derives keys from them overwrites instead of duplicating.
    """

    pipeline: str
    stream: str
    shard_id: str
    first: Position
    last: Position
    first_arrival: float
    items: list[Any]
    lane: int = 0
    #: The output of a tumbling window's final call (no records of its own): keyed apart from the
    #: batch of the window's last record, which has the same bounds.
    window_final: bool = False


@runtime_checkable
class Sink(Protocol):
    """Writes batches. ``write`` returns only once the output is durable."""

    #: True when keys come from the batch bounds (object stores): the engine then records
    #: each batch's bounds before writing it, so a replay after a crash forms the same batches.
    keyed_by_batch: ClassVar[bool]

    async def open(self) -> None: ...

    async def write(self, batch: SinkBatch) -> None:
        """Write durably. Raise ``RetryableError`` for transient failures; the engine retries."""
        ...

    async def close(self) -> None: ...


class SinkConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    """A sink's config: its subclass sets ``tag`` (the ``type`` in pipeline files)."""

    def build(self, ctx: BuildContext) -> Sink:
        raise NotImplementedError

    def check(self, pipeline: str, stream: str) -> None:
        """Raise ``ConfigError`` for settings that cannot work for this pipeline (key templates)."""
        return None
