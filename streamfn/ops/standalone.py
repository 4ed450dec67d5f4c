"""Reading a source outside any coordination (no consumer group, no lease): what tail and replay need.

Most sources hand out readers for any shard. A Kafka source reads only partitions assigned to
its consumer and is fed by one fetch task that its group assigner normally runs; here the
partitions are assigned by hand (the group is never joined, nothing is committed) and the fetch
task runs beside the readers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from ..engine.pipeline import AllShardsAssigner
from ..protocols.assignment import ShardController
from ..protocols.source import ShardInfo, Source


async def start_feeding(source: Source, shards: Sequence[ShardInfo]) -> asyncio.Task[None] | None:
    """Prepare ``source`` to read ``shards`` with no coordinator; returns a task to cancel when done."""
    return await source.read_uncoordinated(shards)


async def stop_feeding(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class StandaloneAssigner(AllShardsAssigner):
    """Every shard in this process, as for a source without coordination, whatever the source."""

    def __init__(self, source: Source) -> None:
        super().__init__(source)
        self._source_ref = source

    async def run(self, controller: ShardController) -> None:
        feeding = await start_feeding(self._source_ref, await self._source_ref.list_shards())
        try:
            await super().run(controller)
        finally:
            await stop_feeding(feeding)
