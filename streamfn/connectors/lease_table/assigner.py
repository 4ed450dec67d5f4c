"""The lease-table assigner: workers share a stream's shards by taking leases, as the KCL does.

Each take round scans the table and aims for ceil(leases / workers) leases: expired leases
first (a lease is expired when its counter was seen unchanged for the failover time on this
worker's monotonic clock, never by comparing clocks), then, only when none are expired, one
steal from the most loaded worker. A lease is assignable once its shard's parents reached
SHARD_END; a finished lease is released. A lost lease stops its shard at once, abandoning
the in-flight batch without a checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...protocols.assignment import Assigner, ShardController
from .table import Lease

if TYPE_CHECKING:
    from ...protocols.source import Source
    from .store import DynamoDBCheckpointStore

log = logging.getLogger("streamfn.leases")


class ExpiryClock:
    """Remembers, per lease, when this worker last saw its counter or owner change."""

    def __init__(self, failover_time: float) -> None:
        self.failover_time = failover_time
        self._seen: dict[str, tuple[int, str | None, float]] = {}
        self._first_seen: dict[str, float] = {}

    def observe(self, leases: Iterable[Lease], now: float) -> None:
        seen: dict[str, tuple[int, str | None, float]] = {}
        for lease in leases:
            previous = self._seen.get(lease.key)
            if previous is not None and previous[0] == lease.counter and previous[1] == lease.owner:
                seen[lease.key] = previous
            else:
                # A lease seen for the first time counts as live if owned: a new worker must
                # watch it for a failover time before calling it dead.
                seen[lease.key] = (lease.counter, lease.owner, now)
        self._seen = seen
        self._first_seen = {key: self._first_seen.get(key, now) for key in seen}

    def proven_alive(self, lease: Lease) -> bool:
        """Its owner renewed it while we watched (a counter unchanged since first seen proves nothing)."""
        seen = self._seen.get(lease.key)
        return lease.owner is not None and seen is not None and seen[2] > self._first_seen.get(lease.key, seen[2])

    def expired(self, lease: Lease, now: float) -> bool:
        if lease.owner is None:
            return True
        seen = self._seen.get(lease.key)
        return seen is None or now - seen[2] > self.failover_time


def parents_done(lease: Lease, by_shard: dict[str, Lease]) -> bool:
    """A lease may run once every parent that has a lease reached SHARD_END (a parent whose
    lease is gone, trimmed long ago, does not block, as in the KCL)."""
    return all(by_shard[p].finished for p in lease.parent_ids if p in by_shard)


@dataclass(frozen=True)
class TakePlan:
    """What one round decides: leases to take because they expired, and leases to steal."""

    take: list[Lease]
    steal: list[Lease]
    target: int
    workers: int


def plan_takes(
    leases: list[Lease], me: str, held: set[str], expired: set[str], *,
    may_steal: bool, max_steal: int = 1, max_leases: int | None = None, rng: random.Random | None = None,
) -> TakePlan:
    """Decide which leases this worker takes now (pure: no I/O, no clock).

    ``held`` are the shard ids this worker holds, ``expired`` the keys it judged expired.
    Only assignable leases count: not finished, parents finished.
    """
    rng = rng or random.Random()
    by_shard = {lease.shard_id: lease for lease in leases}
    active = [lease for lease in leases if not lease.finished and parents_done(lease, by_shard)]
    others_live = [lease for lease in active
                   if lease.shard_id not in held and lease.owner not in (None, me) and lease.key not in expired]
    load = Counter(lease.owner for lease in others_live)
    workers = len(load) + 1
    target = math.ceil(len(active) / workers) if active else 0
    if max_leases is not None:
        target = min(target, max_leases)
    mine = sum(1 for lease in active if lease.shard_id in held)
    needed = target - mine
    if needed <= 0:
        return TakePlan([], [], target, workers)
    # A lease in our name that we do not hold (a write of ours landed but its answer was lost,
    # so we dropped it) is ours to take back at once.
    free = [lease for lease in active
            if lease.shard_id not in held and (lease.key in expired or lease.owner in (None, me))]
    if free:
        rng.shuffle(free)  # workers starting together then rarely race for the same lease
        return TakePlan(free[:needed], [], target, workers)
    if not may_steal or not load:
        return TakePlan([], [], target, workers)
    busiest, count = max(load.items(), key=lambda item: (item[1], item[0] or ""))
    if count > target:
        steal = min(needed, max_steal, count - target)
    elif count == target and needed > 1:
        steal = 1
    else:
        return TakePlan([], [], target, workers)
    theirs = [lease for lease in others_live if lease.owner == busiest]
    rng.shuffle(theirs)
    return TakePlan([], theirs[:steal], target, workers)


class LeaseAssigner(Assigner):
    """Takes, renews (through the store) and releases leases; starts and stops their shards.

    ``settled`` is true after a round in which every unfinished lease was ours or renewed by a live
    worker; ``wake`` makes the next round start at
    once (the pipeline sets it when a shard finishes). ``release`` is the graceful stop: the
    pipeline calls it after its shards stopped and checkpointed.
    """

    def __init__(self, store: DynamoDBCheckpointStore, source: Source | None = None) -> None:
        self.store = store
        self.source = source
        self.settings = store.settings
        self.settled = False
        self.wake: asyncio.Event = asyncio.Event()
        self.clock = ExpiryClock(self.settings.failover_time)
        self._last_steal = -math.inf
        self._last_sync = -math.inf
        #: Shard ids of the last listing (None before the first): leases of other shards are not taken.
        self._listed: set[str] | None = None
        self._rng = random.Random()

    async def run(self, controller: ShardController) -> None:
        source = self.source
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._stop_lost(controller), name="lease-lost-watcher")
            tasks.create_task(self._take_loop(controller, source), name="lease-taker")

    def leases_held(self) -> int | None:
        return len(self.store.held)

    async def release(self) -> None:
        """Give every held lease up (after a last checkpoint) so others take them at once."""
        await self.store.release_all()

    # -- rounds ------------------------------------------------------------------------
    async def _take_loop(self, controller: ShardController, source: Source | None) -> None:
        sync = True
        while True:
            try:
                await self.round(controller, source, sync=sync)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease round failed; retrying at the next interval")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.take_interval):
                    await self.wake.wait()
            sync = self.wake.is_set()  # a shard finished: its children may need leases now
            if sync:
                self.settled = False  # not settled until a round has seen the children's leases
            self.wake.clear()

    async def round(self, controller: ShardController, source: Source | None, *, sync: bool = False) -> None:
        """One take round: release finished leases, sync shards into leases, scan, take, start."""
        store = self.store
        await self._release_finished(controller)
        leases = await store.table.scan()
        now = time.monotonic()
        if source is not None and (sync or self._unlisted(leases)
                                   or now - self._last_sync >= self.settings.shard_sync_interval):
            if await self._sync(source, leases):
                leases = await store.table.scan()
            self._last_sync = now
        now = time.monotonic()
        self.clock.observe(leases, now)
        by_shard = {lease.shard_id: lease for lease in leases}
        self._drop_taken_away(leases)
        expired = {lease.key for lease in leases if self.clock.expired(lease, now)}
        may_steal = now - self._last_steal >= self.settings.steal_interval
        listed = self._listed
        plan = plan_takes(
            [lease for lease in leases if listed is None or lease.shard_id in listed],
            store.worker_id, set(store.held), expired, may_steal=may_steal,
            max_steal=self.settings.max_leases_to_steal, max_leases=self.settings.max_leases_per_worker,
            rng=self._rng,
        )
        for lease in plan.take + plan.steal:
            if await store.take(lease) is not None and lease in plan.steal:
                log.info("lease stolen", extra={"shard": lease.shard_id, "from": lease.owner,
                                                "target": plan.target, "workers": plan.workers})
        if plan.steal:
            self._last_steal = now
        await self._start_ready(controller, by_shard)
        # Settled (for --until-caught-up): every unfinished lease is ours or renewed by a live worker.
        # A dead worker's lease keeps this false until it expires and we take it.
        worker = store.worker_id
        self.settled = all(
            lease.finished or lease.owner == worker or self.clock.proven_alive(lease)
            for lease in leases if listed is None or lease.shard_id in listed
        )

    def _drop_taken_away(self, leases: list[Lease]) -> None:
        """A held lease the scan shows under another owner is lost now, not at the next renewal
        (which may be failover/3 away). A scan older than our own take shows a lower counter."""
        for lease in leases:
            held = self.store.held.get(lease.shard_id)
            if held is not None and lease.owner != self.store.worker_id and lease.counter >= held.counter:
                self.store.forfeit(held, f"the table shows it held by {lease.owner}")

    def _unlisted(self, leases: list[Lease]) -> bool:
        """A lease (another worker created) for a shard our last listing did not have: list again."""
        listed = self._listed
        return listed is not None and any(not lease.finished and lease.shard_id not in listed for lease in leases)

    async def _sync(self, source: Source, leases: list[Lease]) -> bool:
        """Give every listed shard a lease (parents first, so a child never runs before them), and
        delete finished leases of shards the stream no longer lists (trimmed after retention): a
        listed shard's lease is never deleted, so it cannot come back at its trim horizon."""
        shards = await source.list_shards()
        self._listed = {shard.shard_id for shard in shards}
        known = {lease.shard_id for lease in leases}
        changed = False
        for shard in shards:
            if shard.shard_id not in known:
                changed |= await self.store.table.create(shard.shard_id, shard.parent_ids)
        for lease in leases:
            if lease.finished and lease.owner is None and lease.shard_id not in self._listed:
                changed |= await self.store.table.delete_finished(lease)
        return changed

    async def _release_finished(self, controller: ShardController) -> None:
        running = controller.running_shards()
        for shard_id, held in list(self.store.held.items()):
            if held.checkpoint.shard_end and shard_id not in running:
                await self.store.release(shard_id)

    async def _start_ready(self, controller: ShardController, by_shard: dict[str, Lease]) -> None:
        running = controller.running_shards()
        for shard_id, held in list(self.store.held.items()):
            if shard_id in running or held.checkpoint.shard_end:
                continue
            parents = [by_shard.get(p) for p in held.parent_ids]
            if all(p is None or p.finished for p in parents):
                await controller.start_shard(held.shard)

    async def _stop_lost(self, controller: ShardController) -> None:
        """Stop a shard the moment its lease is lost: abandon in-flight work, write nothing."""
        while True:
            shard_id = await self.store.lost.get()
            # Even if the lease was taken back meanwhile, the runner restarts from the table's
            # checkpoint: its own progress may be older than what the other worker wrote.
            try:
                await controller.stop_shard(shard_id, abandon=True)
            except Exception:
                log.exception("stopping a shard whose lease was lost failed", extra={"shard": shard_id})
            self.wake.set()
