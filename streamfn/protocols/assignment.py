"""Who decides which shards this worker processes: the assigner, driving a ShardController.

The engine exposes a ShardController; an Assigner calls it. The default assigner runs every
shard of the source, children only after their parents reached SHARD_END. Kafka's consumer
group and the DynamoDB lease table are assigners too, so scale-out never touches the shard loop.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, NamedTuple, Protocol

from .source import ShardInfo

if TYPE_CHECKING:
    from .checkpoint import CheckpointStore


class ShardController(Protocol):
    """What an assigner may ask of a running pipeline."""

    async def start_shard(self, shard: ShardInfo) -> None:
        """Start processing ``shard`` from its checkpoint (no-op if it already runs)."""
        ...

    async def stop_shard(self, shard_id: str, *, abandon: bool = False) -> None:
        """Stop reading ``shard_id``; finish its in-flight batch (or abandon it when ``abandon``,
        e.g. the lease is lost), flush its checkpoint unless abandoned, and return when stopped."""
        ...

    def running_shards(self) -> set[str]: ...

    async def shard_finished(self, shard_id: str) -> bool:
        """True once the shard's checkpoint is SHARD_END (its children may start)."""
        ...


class Assigner(Protocol):
    """Decides the shards of this worker for as long as the pipeline runs.

    Subclass it to inherit the defaults of the optional members (those with a body).
    """

    #: Set when a shard ended, to look for its children at once (None: the assigner does not wait).
    wake: asyncio.Event | None = None
    #: False while shards may exist that this worker should run and has not started (a shard just
    #: ended, a rebalance is on): ``--until-caught-up`` waits for it.
    settled: bool = True

    async def run(self, controller: ShardController) -> None:
        """Run until cancelled, starting and stopping shards through ``controller``.
        On cancellation, return without stopping shards: the pipeline stops them itself."""
        ...

    def leases_held(self) -> int | None:
        """How many shard leases this worker holds (metrics); None when the assigner takes no leases."""
        return None

    async def release(self) -> None:
        """Give up what this worker holds (leases) at a graceful stop, after the shards stopped."""
        return None


class Coordination(NamedTuple):
    """A coordinated source's checkpoint store and assigner, built together (Kafka's group)."""

    store: CheckpointStore
    assigner: Assigner
