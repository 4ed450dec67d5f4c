"""The consumer-group assigner: Kafka's group protocol decides which partitions this worker runs.

The rebalance listener drives the engine's ShardController. On revoke (before the group moves
on) every revoked partition's shard is stopped: no new batch starts, the in-flight batch
finishes or, past ``revoke_timeout``, is abandoned, and what is done is committed; only then
does the rebalance proceed, so a partition's work never continues after it was revoked. On
assign, each partition is paused until its reader has sought to the committed offset (or the
starting position), then its shard starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from aiokafka.abc import ConsumerRebalanceListener

from ...errors import LeaseLostError
from ...protocols.assignment import Assigner
from ...protocols.source import ShardInfo
from .partitions import shard_id_of

if TYPE_CHECKING:
    from ...protocols.assignment import ShardController
    from .source import KafkaSource

log = logging.getLogger("streamfn.kafka")

#: Seconds an abandoned shard may take to stop before the rebalance goes on without it.
ABANDON_GRACE = 5.0


class KafkaGroupAssigner(Assigner):
    """Assigner for a KafkaSource: subscribes with a rebalance listener, then runs the fetch task."""

    def __init__(self, source: KafkaSource, *, revoke_timeout: float = 30.0) -> None:
        self._source = source
        self.revoke_timeout = revoke_timeout
        #: True once the group assigned partitions to this worker (read by ``--until-caught-up``).
        self.settled = False
        #: Rebalances that took partitions away from this worker (the first join is not one).
        self.rebalances = 0

    async def run(self, controller: ShardController) -> None:
        source = self._source
        source.consumer.subscribe([source.name], listener=GroupListener(self, controller))
        await source.fetch()

    async def revoked(self, controller: ShardController, partitions: set[Any]) -> None:
        if self._source.closing:
            return
        self.settled = False
        if partitions:
            self.rebalances += 1
        running = controller.running_shards()
        shard_ids = sorted(s for s in (shard_id_of(tp.topic, tp.partition) for tp in partitions) if s in running)
        if shard_ids:
            log.info("partitions revoked: stopping their shards", extra={"shards": shard_ids})
        started = time.monotonic()
        stopping = asyncio.gather(*(controller.stop_shard(s) for s in shard_ids))
        try:
            await asyncio.wait_for(asyncio.shield(stopping), self.revoke_timeout)
        except TimeoutError:
            log.warning("in-flight batches abandoned at the revoke deadline",
                        extra={"shards": shard_ids, "seconds": self.revoke_timeout})
            await asyncio.gather(*(controller.stop_shard(s, abandon=True) for s in shard_ids))
            # Abandoning cancels the shards' tasks; give the graceful stops a moment to see it,
            # but never hold the group hostage (a sync handler's thread cannot be cancelled).
            done, _ = await asyncio.wait([stopping], timeout=ABANDON_GRACE)
            if not done:
                stopping.cancel()
                log.error("revoked shards did not stop after being abandoned; the rebalance goes on",
                          extra={"shards": shard_ids})
            await asyncio.gather(stopping, return_exceptions=True)
        store = self._source.store
        if store is not None:
            with contextlib.suppress(LeaseLostError):
                await store.flush()
            store.forget(shard_ids)
        if shard_ids:
            log.info("revoked shards stopped", extra={"shards": shard_ids,
                                                      "seconds": round(time.monotonic() - started, 3)})

    async def assigned(self, controller: ShardController, partitions: set[Any]) -> None:
        if self._source.closing:
            return
        if partitions:
            # Nothing is fetched for a partition until its reader sought to where it resumes.
            self._source.consumer.pause(*partitions)
        shard_ids = sorted((shard_id_of(tp.topic, tp.partition) for tp in partitions),
                           key=lambda s: int(s.rpartition("-")[2]))
        log.info("partitions assigned", extra={"shards": shard_ids})
        for shard_id in shard_ids:
            await controller.start_shard(ShardInfo(shard_id))
        self.settled = True


class GroupListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka awaits these callbacks inside the rebalance: the group waits for them."""

    def __init__(self, assigner: KafkaGroupAssigner, controller: ShardController) -> None:
        self._assigner = assigner
        self._controller = controller

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        try:
            await self._assigner.revoked(self._controller, set(revoked))
        except Exception:
            log.exception("stopping revoked partitions failed")
            raise

    async def on_partitions_assigned(self, assigned: set[Any]) -> None:
        try:
            await self._assigner.assigned(self._controller, set(assigned))
        except Exception:
            log.exception("starting assigned partitions failed")
            raise
