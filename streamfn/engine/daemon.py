"""The daemon: runs pipelines side by side, turns SIGTERM/SIGINT into a bounded graceful stop and
SIGHUP into a reload of the pipeline files (changed pipelines restart at a batch boundary)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import LoadedPipeline
from ..errors import StreamfnError
from . import heap
from .memory import freeze_startup
from .notify import READY, announce_running, notify
from .pipeline import Pipeline
from .reload import ReloadPlan, plan_reload
from .run_lock import RunLock, local_store_path, lock_path

if TYPE_CHECKING:
    from ..metrics import MetricsConfig, OpsServer

log = logging.getLogger("streamfn.daemon")

#: Reads the pipeline files again for a reload: every valid one by its resolved path, and the paths
#: of files that were refused (each error already logged), whose running pipelines stay as they are.
Reloader = Callable[[], tuple[dict[Path, LoadedPipeline], list[Path]]]


def install_event_loop_policy() -> None:
    """Use uvloop when it is installed: the engine is loop-bound, and uvloop's loop is faster."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class _Running:
    """One started pipeline: its own stop event (a reload stops it alone), its run task, its lock."""

    def __init__(self, pipeline: Pipeline, lock: RunLock | None) -> None:
        self.pipeline = pipeline
        self.lock = lock
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class Fleet:
    """The daemon's pipelines by file; ``pipelines`` is the live list the ops server and watchers read."""

    def __init__(self, *, until_caught_up: bool, ops: OpsServer | None) -> None:
        self._until_caught_up = until_caught_up
        #: The /metrics, /healthz, /readyz endpoint when enabled (its ``port`` once started).
        self.ops = ops
        self.running: dict[Path, _Running] = {}
        self.pipelines: list[Pipeline] = []
        #: Set whenever the set of run tasks changes, so the daemon's wait picks up the new ones.
        self.changed = asyncio.Event()
        self._reloading = asyncio.Lock()

    async def start(self, key: Path, pipeline: Pipeline) -> None:
        """Open ``pipeline`` (after taking its run lock) and start its run task."""
        store = local_store_path(pipeline.loaded)
        lock = None if store is None else RunLock(lock_path(store, pipeline.name))
        if lock is not None:
            await lock.acquire()
        try:
            await pipeline.open()
        except BaseException:
            if lock is not None:
                lock.release()
            with contextlib.suppress(Exception):
                await pipeline.shutdown()  # closes whatever parts did open
            raise
        entry = _Running(pipeline, lock)
        self.running[key] = entry
        self.pipelines.append(pipeline)
        if self.ops is not None:
            self.ops.mark_started(pipeline.name)

    def launch(self) -> None:
        """Start the run task of every opened pipeline that has none yet."""
        for entry in self.running.values():
            if entry.task is None:
                entry.task = asyncio.create_task(entry.pipeline.run(entry.stop, until_caught_up=self._until_caught_up),
                                                 name=f"pipeline:{entry.pipeline.name}")
        self.changed.set()

    async def stop(self, key: Path) -> None:
        """Stop one pipeline gracefully: in-flight batches finish, checkpoints are written, it closes."""
        entry = self.running.pop(key)
        entry.stop.set()
        try:
            if entry.task is not None:
                await asyncio.gather(entry.task, return_exceptions=True)
            await entry.pipeline.shutdown()
        finally:
            if entry.pipeline in self.pipelines:
                self.pipelines.remove(entry.pipeline)
            if entry.lock is not None:
                entry.lock.release()
            self.changed.set()

    async def stop_all(self) -> None:
        results = await asyncio.gather(*(self.stop(key) for key in list(self.running)), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def handled(self) -> int:
        """Records handled so far by every running pipeline's shards, also those that stopped since."""
        return sum(stats.handled for pipeline in self.pipelines for stats in list(pipeline.shard_stats.values()))

    def tasks(self) -> list[asyncio.Task[None]]:
        return [entry.task for entry in self.running.values() if entry.task is not None]

    async def reload(self, reloader: Reloader) -> ReloadPlan | None:
        """Apply the pipeline files as they are now; one reload at a time. A file that fails to load,
        or a pipeline that fails to open with its new settings, leaves the old one running."""
        async with self._reloading:
            notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
            try:
                return await self._reload(reloader)
            finally:
                notify(READY)

    async def _reload(self, reloader: Reloader) -> ReloadPlan | None:
        try:
            wanted, refused = reloader()
        except StreamfnError as exc:
            log.error("reload refused, the pipelines run on unchanged: %s", exc)
            return None
        plan = plan_reload({key: entry.pipeline.loaded.config for key, entry in self.running.items()},
                           {key: loaded.config for key, loaded in wanted.items()}, refused)
        log.info("reloading", extra={"stop": [str(p) for p in plan.stop], "start": [str(p) for p in plan.start],
                                     "restart": [str(p) for p in plan.restart], "refused": [str(p) for p in refused]})
        for key in plan.stop:
            await self.stop(key)
        for key in plan.restart:
            old = self.running[key].pipeline.loaded
            try:
                replacement = Pipeline(wanted[key])  # a handler that does not import: refused before the stop
            except Exception as exc:
                log.error("reload of %s refused, its pipeline runs on unchanged: %s", key, exc)
                continue
            await self.stop(key)
            if not await self._start_logged(key, replacement):
                log.error("restarting %s with its previous settings", key)
                await self._start_logged(key, Pipeline(old))
        for key in plan.start:
            try:
                await self._start_logged(key, Pipeline(wanted[key]))
            except Exception as exc:
                log.error("new pipeline file %s refused: %s", key, exc)
        self.launch()
        log.info("reloaded", extra={"pipelines": [p.name for p in self.pipelines]})
        return plan

    async def _start_logged(self, key: Path, pipeline: Pipeline) -> bool:
        try:
            await self.start(key, pipeline)
        except Exception as exc:
            log.error("pipeline %s from %s did not start: %s", pipeline.name, key, exc)
            return False
        return True


async def run_pipelines(
    loaded: Sequence[LoadedPipeline],
    *,
    until_caught_up: bool = False,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
    metrics: MetricsConfig | None = None,
    watch: Callable[[Sequence[Pipeline]], Coroutine[Any, Any, None]] | None = None,
    reloader: Reloader | None = None,
    started: Callable[[Fleet], None] | None = None,
    release_idle_heap: bool = False,
) -> None:
    """Run every pipeline until a signal (or ``stop``), or until all are caught up.

    With ``metrics`` enabled, /metrics, /healthz and /readyz are served while the pipelines run.
    ``watch`` runs beside the pipelines once they are open (it may set ``stop``), and is cancelled after.
    With ``reloader``, SIGHUP re-reads the pipeline files through it (see ``Fleet.reload``).
    ``started`` is called once every pipeline runs, with the fleet (embedding callers keep it).
    ``release_idle_heap`` gives free heap memory back after each busy spell (``engine/heap.py``;
    ``streamfn run`` sets it, as it owns its process).
    """
    stop = stop or asyncio.Event()
    pipelines = [(item.path.resolve(), Pipeline(item)) for item in loaded]  # handler import errors: before any read
    loop = asyncio.get_running_loop()
    ops: OpsServer | None = None
    if metrics is not None and metrics.enabled:  # -- ops endpoint (streamfn.metrics) --
        from ..metrics import OpsServer

        ops = OpsServer(metrics, lambda: fleet.pipelines)
    fleet = Fleet(until_caught_up=until_caught_up, ops=ops)
    reloads: set[asyncio.Task[Any]] = set()
    if handle_signals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, _on_signal, stop, signum)
        if reloader is not None:
            loop.add_signal_handler(signal.SIGHUP, _on_hangup, fleet, reloader, reloads)
    watching: asyncio.Task[None] | None = None
    releasing: asyncio.Task[None] | None = None
    try:
        if ops is not None:
            await ops.start()
        for key, pipeline in pipelines:
            await fleet.start(key, pipeline)
        freeze_startup()  # what opening made stays out of every collection (engine/memory.py)
        log.info("running", extra={"pipelines": [p.name for p in fleet.pipelines]})
        announce_running(stop)  # sd_notify READY=1 now, STOPPING=1 once stop is set
        fleet.launch()
        if started is not None:
            started(fleet)
        watching = None if watch is None else asyncio.create_task(watch(fleet.pipelines))
        if release_idle_heap:
            releasing = asyncio.create_task(heap.release_when_idle(fleet.handled), name="release-idle-heap")
        await _wait(fleet, stop, until_caught_up=until_caught_up)
    finally:
        stop.set()
        for task in reloads:
            task.cancel()
        await asyncio.gather(*reloads, return_exceptions=True)
        for helper in (watching, releasing):
            if helper is not None:
                helper.cancel()
                await asyncio.gather(helper, return_exceptions=True)
        names = [p.name for p in fleet.pipelines]
        try:
            await fleet.stop_all()
        finally:
            if ops is not None:
                await ops.close()
            if handle_signals:
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    with contextlib.suppress(Exception):
                        loop.remove_signal_handler(signum)
        log.info("stopped", extra={"pipelines": names})


async def _wait(fleet: Fleet, stop: asyncio.Event, *, until_caught_up: bool) -> None:
    """Until ``stop``, a pipeline's failure (raised), or (``until_caught_up``) every pipeline done."""
    stopped = asyncio.create_task(stop.wait())
    try:
        while not stop.is_set():
            for task in fleet.tasks():
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            pending = [task for task in fleet.tasks() if not task.done()]
            if until_caught_up and not pending:
                return
            fleet.changed.clear()
            changed = asyncio.create_task(fleet.changed.wait())
            try:
                await asyncio.wait([stopped, changed, *pending], return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
    finally:
        stopped.cancel()


def _on_signal(stop: asyncio.Event, signum: int) -> None:
    if stop.is_set():
        return
    log.info("stopping on %s: finishing in-flight batches", signal.Signals(signum).name)
    stop.set()


def _on_hangup(fleet: Fleet, reloader: Reloader, reloads: set[asyncio.Task[Any]]) -> None:
    log.info("reloading on SIGHUP: re-reading the pipeline files")
    task = asyncio.get_running_loop().create_task(fleet.reload(reloader))
    reloads.add(task)
    task.add_done_callback(reloads.discard)
