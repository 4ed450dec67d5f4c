"""The daemon: runs pipelines side by side, turns SIGTERM/SIGINT into a bounded graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from ..config import LoadedPipeline
from .notify import announce_running
from .pipeline import Pipeline

if TYPE_CHECKING:
    from ..metrics import MetricsConfig, OpsServer

log = logging.getLogger("streamfn.daemon")


def install_event_loop_policy() -> None:
    """Use uvloop when it is installed: the engine is loop-bound, and uvloop's loop is faster."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def run_pipelines(
    loaded: Sequence[LoadedPipeline],
    *,
    until_caught_up: bool = False,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
    metrics: MetricsConfig | None = None,
    watch: Callable[[Sequence[Pipeline]], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """Run every pipeline until a signal (or ``stop``), or until all are caught up.

    With ``metrics`` enabled, /metrics, /healthz and /readyz are served while the pipelines run.
    ``watch`` runs beside the pipelines once they are open (it may set ``stop``), and is cancelled after.
    """
    stop = stop or asyncio.Event()
    pipelines = [Pipeline(item) for item in loaded]  # handler import errors surface here, before any read
    loop = asyncio.get_running_loop()
    if handle_signals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, _on_signal, stop, signum)
    opened: list[Pipeline] = []
    ops: OpsServer | None = None
    watching: asyncio.Task[None] | None = None
    try:
        if metrics is not None and metrics.enabled:  # -- ops endpoint (streamfn.metrics) --
            from ..metrics import start_ops_server

            ops = await start_ops_server(metrics, pipelines)
        for pipeline in pipelines:
            await pipeline.open()
            opened.append(pipeline)
            if ops is not None:
                ops.mark_started(pipeline.name)
        log.info("running", extra={"pipelines": [p.name for p in pipelines]})
        announce_running(stop)  # sd_notify READY=1 now, STOPPING=1 once stop is set
        runs = [asyncio.create_task(p.run(stop, until_caught_up=until_caught_up)) for p in pipelines]
        watching = None if watch is None else asyncio.create_task(watch(pipelines))
        done, _ = await asyncio.wait(runs, return_when=asyncio.FIRST_EXCEPTION)
        stop.set()
        await asyncio.gather(*runs, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        stop.set()
        if watching is not None:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
        try:
            await asyncio.gather(*(p.shutdown() for p in opened), return_exceptions=False)
        finally:
            if ops is not None:
                await ops.close()
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(signum)
        log.info("stopped", extra={"pipelines": [p.name for p in pipelines]})


def _on_signal(stop: asyncio.Event, signum: int) -> None:
    if stop.is_set():
        return
    log.info("stopping on %s: finishing in-flight batches", signal.Signals(signum).name)
    stop.set()
