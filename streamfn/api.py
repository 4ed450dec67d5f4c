"""Embedding streamfn in your own asyncio program: pipelines built in code, handlers passed as callables.

    import streamfn

    def handle(batch, context):
        return [record.json() for record in batch]

    async def main():
        clicks = streamfn.pipeline({"name": "clicks", "source": {"type": "local", "stream": "clicks"},
                                    "sinks": [{"type": "local", "path": "out"}]}, handler=handle)
        async with streamfn.Engine(clicks) as engine:   # started; a graceful stop on exit
            streamfn.append_records(clicks, [("user-1", b'{"page": "/"}')])
            await engine.caught_up()                     # handled, written and checkpointed

Everything a pipeline file can say, the dict (or a ``PipelineConfig``) says the same way, and it
is validated the same way (a ``ConfigError`` naming the field). The engine is the daemon's, on
the caller's loop: the same checkpoints, retries, sinks and graceful stop; it installs no signal
handlers (the program owns those).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from .config import (
    LoadedPipeline,
    PipelineConfig,
    check_components,
    describe_validation_error,
    pipeline_config_type,
)
from .config_doc import accept_lambda_spellings
from .connectors.local.log import LocalLog
from .connectors.local.source import LocalSourceConfig
from .engine.daemon import Fleet, run_pipelines
from .errors import ConfigError, StreamfnError


def pipeline(spec: Mapping[str, Any] | PipelineConfig, *, handler: Callable[..., Any] | None = None,
             base_dir: str | Path | None = None) -> LoadedPipeline:
    """A validated pipeline from a dict (a pipeline file's fields) or a ``PipelineConfig``.

    ``handler`` is the function called per batch (plain or async, as in a file's ``handler``); it
    replaces the spec's ``handler`` field, which may then be left out. Relative paths (``state_dir``,
    a local sink's ``path``) are taken from ``base_dir`` (default: the working directory).
    Raises ConfigError for an invalid spec, as ``streamfn validate`` would for the file.
    """
    base = Path.cwd() if base_dir is None else Path(base_dir).resolve()
    if handler is not None and not callable(handler):
        raise ConfigError(f"handler {handler!r} is not callable", field="handler")
    # The callable is named in the config for logs and status only: the engine calls it as given.
    named = None if handler is None else f"{handler.__module__}:{getattr(handler, '__qualname__', 'handler')}"
    if isinstance(spec, PipelineConfig):
        config = spec if named is None else msgspec.structs.replace(spec, handler=named)
    else:
        document = dict(spec)
        if named is not None:
            document["handler"] = named
        elif "handler" not in document:
            raise ConfigError("no handler: pass handler=your_function (or a 'module:function' string in the spec)",
                              field="handler")
        config = _convert(document)
    if handler is not None and (config.interface == "runtime-api" or config.isolation == "process"
                                or config.handler_version is not None):
        raise ConfigError("a handler passed as a callable runs in this process: leave out interface = "
                          "'runtime-api', isolation = 'process' and handler_version, or name the handler as "
                          "'module:function'", field="handler")
    loaded = LoadedPipeline(config=config, path=base / f"<{config.name}>", handler=handler)
    check_components(loaded)
    return loaded


def _convert(document: dict[str, Any]) -> PipelineConfig:
    try:
        return msgspec.convert(accept_lambda_spellings(document), pipeline_config_type(), strict=False)
    except msgspec.ValidationError as exc:
        message, field = describe_validation_error(exc)
        raise ConfigError(message, field=field) from None


def append_records(loaded: LoadedPipeline, records: Iterable[tuple[str, bytes]]) -> int:
    """Append ``(partition_key, data)`` records to a local-source pipeline's log, durably, in one
    transaction (creating the stream if needed); returns how many. For other sources, write to the
    stream itself."""
    source = loaded.config.source
    if not isinstance(source, LocalSourceConfig):
        raise ConfigError("append_records writes to a local source's log; this pipeline reads another source",
                          field="source.type")
    ctx = loaded.context
    log = LocalLog(ctx.resolve(source.path) if source.path else ctx.state_dir / "log.sqlite3")
    try:
        log.create_stream(source.stream, source.shards)
        return log.append(source.stream, records)
    finally:
        log.close()


class Engine:
    """Runs pipelines inside the caller's event loop until ``stop()`` (or the ``async with`` ends).

    The first pipeline whose ``metrics`` section is enabled serves /metrics, /healthz and /readyz
    for all of them (see ``metrics_url``), as ``streamfn run`` does.

    ``start()`` returns once every pipeline has opened its source, store and sinks and started its
    shards; an error there (a handler that does not import, a server that does not answer) is
    raised from it. A pipeline that fails later is raised from ``caught_up()`` or ``stop()``.
    """

    def __init__(self, *pipelines: LoadedPipeline) -> None:
        if not pipelines:
            raise ConfigError("an Engine needs at least one pipeline (streamfn.pipeline(...))")
        names = [loaded.config.name for loaded in pipelines]
        if len(set(names)) != len(names):
            raise ConfigError(f"pipeline names must differ: {names}", field="name")
        self._loaded = list(pipelines)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._fleet: Fleet | None = None

    async def start(self) -> None:
        if self._task is not None:
            raise StreamfnError("this Engine was already started; make a new one to run again")
        opened = asyncio.get_running_loop().create_future()

        def started(fleet: Fleet) -> None:
            self._fleet = fleet
            opened.set_result(None)

        metrics = next((p.config.metrics for p in self._loaded if p.config.metrics and p.config.metrics.enabled), None)
        self._task = asyncio.create_task(run_pipelines(self._loaded, stop=self._stop, handle_signals=False,
                                                       metrics=metrics, started=started), name="streamfn.Engine")
        await asyncio.wait([opened, self._task], return_when=asyncio.FIRST_COMPLETED)
        if not opened.done():
            opened.cancel()
            await self._task  # raises why the pipelines did not start
            raise StreamfnError("the pipelines ended before they started")

    @property
    def metrics_url(self) -> str | None:
        """``http://host:port`` of /metrics, /healthz and /readyz when a pipeline enables ``[metrics]``
        (``port = 0`` picks a free port: read it here once started); None otherwise."""
        ops = self._started().ops
        if ops is None:
            return None
        host = ops.config.host if ops.config.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return f"http://{host}:{ops.port}"

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def caught_up(self) -> None:
        """Return once every shard has handled every record present (its output written and its
        checkpoint stored), or raise a pipeline's failure. A blocked shard (a handler failing again
        and again) is not caught up: bound the wait with ``asyncio.timeout``."""
        fleet = self._started()
        while True:
            self._raise_if_ended()
            if all(p.caught_up() for p in fleet.pipelines):
                for p in fleet.pipelines:
                    await p.store.flush()
                if all(p.caught_up() for p in fleet.pipelines):
                    return
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Stop gracefully: in-flight batches finish (within each pipeline's ``shutdown_timeout``),
        checkpoints are written, everything closes. Raises a pipeline's failure, if one failed."""
        if self._task is None:
            return
        self._stop.set()
        await self._task

    def _started(self) -> Fleet:
        if self._fleet is None:
            raise StreamfnError("the Engine is not started: await engine.start() or use `async with`")
        return self._fleet

    def _raise_if_ended(self) -> None:
        if self._task is not None and self._task.done():
            self._task.result()  # a pipeline's failure
            raise StreamfnError("the Engine has stopped")

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
