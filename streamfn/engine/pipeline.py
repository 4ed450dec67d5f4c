"""One pipeline at run time: builds its parts from the config, runs shard runners, stops them.

The pipeline is the ShardController an assigner drives. Without a coordinating assigner
(a Kafka group, a lease table) every shard runs here, children after their parents.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time

from .. import registry
from ..backoff import Backoff
from ..config import LoadedPipeline
from ..errors import LeaseLostError, SourceError, StreamfnError
from ..lambda_shapes import local_function_arn
from ..protocols.assignment import Assigner, Coordination, ShardController
from ..protocols.checkpoint import CheckpointStore
from ..protocols.source import ShardInfo, Source, StartingPosition
from ..runtime.build import process_slots
from .handler_threads import HANDLER_THREAD_PREFIX, HandlerThreads
from .invoke import Invoker, load_handler
from .record_filter import record_filter
from .shard import ShardEnv, ShardRunner
from .stats import ShardStats
from .versioned import versioned_invoker

log = logging.getLogger("streamfn.pipeline")


def build_coordination(loaded: LoadedPipeline, source: Source) -> Coordination:
    """The checkpoint store and the assigner: a coordinated source (Kafka's group) brings both;
    else the configured store (without a ``[checkpoints]`` section, the local one in the state
    folder), with the assigner that comes with it (the lease table's) or every shard here."""
    configured = loaded.config.checkpoints
    coordinated = source.coordination(configured)
    if coordinated is not None:
        return coordinated
    store = (configured or registry.default_checkpoints()).build(loaded.context)
    return Coordination(store, store.assigner(source) or AllShardsAssigner(source))


def build_checkpoint_store(loaded: LoadedPipeline, source: Source) -> CheckpointStore:
    """The checkpoint store the daemon would use (see :func:`build_coordination`)."""
    return build_coordination(loaded, source).store


class AllShardsAssigner(Assigner):
    """Runs every shard of the source in this worker; a child starts once its parents ended.

    ``wake`` is set when a shard ended: a discovery runs at once. ``settled`` is true once a
    discovery that began after the last shard end completed (it started every shard that could
    start): what an end unblocks (a split's children) is known only to a listing made after it.
    """

    def __init__(self, source: Source, discovery_interval: float = 10.0) -> None:
        self._source = source
        self._interval = discovery_interval
        self.settled = False
        self.wake: asyncio.Event = asyncio.Event()

    async def run(self, controller: ShardController) -> None:
        wake = self.wake
        while True:
            if wake.is_set():
                self.settled = False  # a shard ended since the last discovery began
            wake.clear()
            await self.discover(controller)
            self.settled = not wake.is_set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await wake.wait()

    async def discover(self, controller: ShardController) -> None:
        """Start every listed shard that is not running, not finished, and whose parents finished."""
        shards = await self._source.list_shards()
        known = {shard.shard_id for shard in shards}
        running = controller.running_shards()
        for shard in shards:
            if shard.shard_id in running:
                continue
            if await controller.shard_finished(shard.shard_id):
                continue
            parents = [p for p in shard.parent_ids if p in known]
            if all([await controller.shard_finished(p) for p in parents]):
                await controller.start_shard(shard)


class Pipeline:
    """Implements ShardController for one pipeline config."""

    def __init__(self, loaded: LoadedPipeline) -> None:
        self.loaded = loaded
        config, ctx = loaded.config, loaded.context
        self.name = config.name
        self.config = config
        slots = self._process_slots = process_slots(loaded)  # a handler in processes is not imported here
        self.source: Source = config.source.build(ctx)
        self.sinks = [sink.build(ctx) for sink in config.sinks]
        self.destination = config.on_failure.build(ctx) if config.on_failure else None
        coordination = build_coordination(loaded, self.source)
        self.store: CheckpointStore = coordination.store
        self.assigner: Assigner = coordination.assigner
        traits = self.source.traits
        self._threads = HandlerThreads(f"{HANDLER_THREAD_PREFIX}{self.name}")
        build_invoker = functools.partial(
            Invoker, interface=config.interface, timeout=config.timeout,
            report_failures=config.report_batch_item_failures, lambda_event=self.source.lambda_event,
            threads=self._threads,
            windowed=config.tumbling_window > 0, slots=slots,
        )
        invoker = (versioned_invoker(ctx.state_dir, config.handler_version, self.name, build_invoker)
                   if config.handler_version is not None
                   else build_invoker(None if slots is not None
                                      else loaded.handler or load_handler(config.handler,
                                                                          [ctx.config_dir, ctx.config_dir.cwd()])))
        self.env = ShardEnv(
            pipeline=self.name, stream=self.source.name, source_kind=traits.kind,
            source=self.source, invoker=invoker, sinks=self.sinks, store=self.store,
            destination=self.destination, limits=config.batching.limits(), policy=config.retry.policy(),
            starting=StartingPosition(config.starting_position, config.starting_timestamp),
            timeout=config.timeout,
            lanes=config.parallelization_factor,
            tumbling_window=config.tumbling_window,
            handler_output=config.handler_output,
            accept=record_filter(config.filters, traits.filter_data_key),
            function_arn=config.function_arn or local_function_arn(self.name),
        )
        self.runners: dict[str, ShardRunner] = {}
        #: Every shard this pipeline ran in this process, running or not: a shard that stops and starts
        #: again (a lease lost and taken back) continues its counters, and the pipeline's totals never
        #: go down when a shard moves to another worker.
        self.shard_stats: dict[str, ShardStats] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.failed: BaseException | None = None

    async def open(self) -> None:
        await self.source.open()
        await self.store.open()
        await self.store.bind(self.source)  # e.g. refuse checkpoints made against another local log
        for sink in self.sinks:
            await sink.open()
        if self.destination is not None:
            await self.destination.open()

    # -- ShardController -------------------------------------------------------------
    async def start_shard(self, shard: ShardInfo) -> None:
        if shard.shard_id in self._tasks:
            return
        stats = self.shard_stats.get(shard.shard_id)
        if stats is None:
            stats = self.shard_stats[shard.shard_id] = ShardStats(shard.shard_id)
        else:
            stats.restart()
        runner = ShardRunner(shard, self.env, stats)
        self.runners[shard.shard_id] = runner
        self._tasks[shard.shard_id] = asyncio.create_task(self._supervise(runner), name=f"shard:{shard.shard_id}")
        log.info("shard started", extra={"pipeline": self.name, "shard": shard.shard_id})

    async def stop_shard(self, shard_id: str, *, abandon: bool = False, deadline: float | None = None) -> None:
        runner, task = self.runners.get(shard_id), self._tasks.get(shard_id)
        if runner is None or task is None:
            return
        runner.request_stop(abandon=abandon)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            log.warning("in-flight batch abandoned at the shutdown deadline",
                        extra={"pipeline": self.name, "shard": shard_id})
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        except BaseException:
            await asyncio.gather(task, return_exceptions=True)
        self._tasks.pop(shard_id, None)
        self.runners.pop(shard_id, None)
        if not abandon:
            with contextlib.suppress(LeaseLostError):
                await self.store.flush()

    def running_shards(self) -> set[str]:
        return set(self._tasks)

    async def shard_finished(self, shard_id: str) -> bool:
        checkpoint = await self.store.load(shard_id)
        return checkpoint is not None and checkpoint.shard_end

    # ---------------------------------------------------------------------------------
    async def _supervise(self, runner: ShardRunner) -> None:
        """Keep one shard running: a failed runner restarts from its checkpoint after a backoff, and
        the shard shows as blocked meanwhile (with the error), never restarting silently."""
        backoff = Backoff(1.0, 60.0, floor=0.5)
        while True:
            try:
                await runner.run()
            except LeaseLostError:
                log.warning("lease lost; shard work stopped", extra={"pipeline": self.name, "shard": runner.shard_id})
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = backoff.next_delay()
                cause = "source" if isinstance(exc, SourceError) else "shard runner"
                runner.stats.mark_blocked(cause, f"{exc} (checkpoint {runner.stats.checkpoint or 'none'})")
                runner.stats.retries += 1
                extra = {"pipeline": self.name, "shard": runner.shard_id, "error": repr(exc),
                         "checkpoint": runner.stats.checkpoint}
                if isinstance(exc, StreamfnError):
                    log.error("shard blocked: %s; retrying from its checkpoint in %.1fs", exc, delay, extra=extra)
                else:
                    log.exception("shard runner failed; restarting from its checkpoint in %.1fs", delay, extra=extra)
                await asyncio.sleep(delay)
                if runner.stopping:
                    return
                runner = ShardRunner(runner.shard, self.env, runner.stats)
                self.runners[runner.shard_id] = runner
                continue
            if runner.finished:
                self._tasks.pop(runner.shard_id, None)
                self.runners.pop(runner.shard_id, None)
                wake = self.assigner.wake
                if wake is not None:
                    wake.set()
            return

    def caught_up(self) -> bool:
        """Every shard that exists is at its tip or ended (for ``--until-caught-up``).

        A shard that just ended counts as not caught up until the assigner has looked again
        (``wake`` set, ``settled`` cleared): its children may exist and have not started yet.
        A blocked shard (a failing source, handler or write) is not at its tip either.
        """
        assigner = self.assigner
        if not assigner.settled:
            return False
        wake = assigner.wake
        if wake is not None and wake.is_set():
            return False
        runners = [self.runners[s] for s in self._tasks if s in self.runners]
        return all(r.idle and not r.ending and r.stats.blocked_since is None for r in runners)

    async def run(self, stop: asyncio.Event, *, until_caught_up: bool = False) -> None:
        """Run until ``stop`` is set (or, with ``until_caught_up``, until every shard is drained)."""
        assigner_task = asyncio.create_task(self.assigner.run(self), name=f"assigner:{self.name}")
        try:
            while not stop.is_set():
                if assigner_task.done():
                    assigner_task.result()  # an assigner must not end on its own: surface why
                    raise RuntimeError("assigner stopped")
                if until_caught_up and self.caught_up():
                    await self.store.flush()
                    if self.caught_up():
                        break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05 if until_caught_up else 1.0):
                        await stop.wait()
        finally:
            assigner_task.cancel()
            await asyncio.gather(assigner_task, return_exceptions=True)

    async def shutdown(self) -> None:
        """Stop reading, finish in-flight batches within ``shutdown_timeout``, flush, release, close."""
        deadline = time.monotonic() + self.config.shutdown_timeout
        await asyncio.gather(*(self.stop_shard(s, deadline=deadline) for s in list(self._tasks)))
        await self.assigner.release()
        with contextlib.suppress(LeaseLostError):
            await self.store.flush()
        await self.store.close()
        for sink in self.sinks:
            await sink.close()
        if self.destination is not None:
            await self.destination.close()
        await self.source.close()
        self._threads.shutdown()
        if self._process_slots is not None:
            await self._process_slots.close()
