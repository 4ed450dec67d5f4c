"""``streamfn replay``: run a pipeline's handler and sinks again over a past range of its source.

The replay is an ordinary pipeline run with three changes: it starts at ``--from`` (a time or
the trim horizon), it keeps its checkpoints in a private file so the live pipeline's progress is
untouched, and every shard reader ends at ``--to`` (or at the tip once caught up). Each shard is
read by this process alone: no lease is taken and no consumer group joined (``standalone.py``).
Sink keys derive from shard and sequence range, so a batch formed with the same bounds lands on
the same object; a batch formed with other bounds (the live run cut it smaller) lands beside it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any, cast

import msgspec

from ..checkpoints.local import LocalCheckpointStoreConfig
from ..config import LoadedPipeline
from ..engine.pipeline import Pipeline
from ..records import Position
from ..sources.base import ReadResult, ShardInfo, StartingPosition
from ..sources.local import LocalSourceConfig
from ..sources.local_log import LocalLog
from .parts import local_log_path
from .standalone import StandaloneAssigner


class BoundedReader:
    """A shard reader that ends the shard after the last record that arrived at or before ``until``.

    Ending the shard is safe: its ``SHARD_END`` lands in the replay's private checkpoints only.
    """

    def __init__(self, inner: Any, until: float | None, source: BoundedSource) -> None:
        self._inner = inner
        self._until = until
        self._source = source
        self._ended = False

    async def read(self, max_records: int, wait: float) -> ReadResult:
        if self._ended:
            return ReadResult([], shard_end=True)
        result: ReadResult = await self._inner.read(max_records, wait)
        records, until = result.records, self._until
        if until is not None:
            # a prefix: the range never has a gap, even where arrival times are not monotonic
            in_range = list(itertools.takewhile(lambda r: r.arrival_time <= until, records))
            if len(in_range) < len(records):
                self._ended = True
                result = ReadResult(in_range, shard_end=True, behind_ms=result.behind_ms)
        self._source.delivered += len(result.records)
        return result

    async def close(self) -> None:
        await self._inner.close()


class BoundedSource:
    """The pipeline's source with every reader ending at ``until``; everything else passes through."""

    def __init__(self, inner: Any, until: float | None) -> None:
        self._inner = inner
        self._until = until
        #: Records handed out by all readers so far (the replay's progress).
        self.delivered = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def reader(self, shard: ShardInfo, after: Position | None, start: StartingPosition) -> Any:
        return BoundedReader(self._inner.reader(shard, after, start), self._until, self)


def replay_config(loaded: LoadedPipeline, start: float | None) -> LoadedPipeline:
    """The pipeline file's config, starting at ``start`` (None: the trim horizon)."""
    config = msgspec.structs.replace(
        loaded.config,
        starting_position="trim_horizon" if start is None else "at_timestamp",
        starting_timestamp=start,
    )
    return LoadedPipeline(config=config, path=loaded.path)


def replay_pipeline(loaded: LoadedPipeline, start: float | None, until: float | None, checkpoints: Path) -> Pipeline:
    """A Pipeline over the replay range whose shards all run here (no lease, no consumer group).

    Built as the daemon builds it, then three parts are swapped: the source (bounded at
    ``until``), the checkpoint store (a private file; the configured one is never opened) and
    the assigner (every shard here).
    """
    replayed = replay_config(loaded, start)
    pipeline = Pipeline(replayed)
    inner: Any = pipeline.source
    own = getattr(inner, "config", None)
    if own is not None and getattr(own, "starting_position", None) is not None:
        # a source's own starting position (Kafka has one) would win over --from
        inner.config = msgspec.structs.replace(own, starting_position=None)
    pipeline.source = cast(Any, BoundedSource(inner, until))
    pipeline.store = LocalCheckpointStoreConfig(path=str(checkpoints)).build(replayed.context)
    pipeline.env = dataclasses.replace(pipeline.env, source=pipeline.source, store=pipeline.store)
    pipeline.assigner = StandaloneAssigner(pipeline.source)
    return pipeline


def expected_records(loaded: LoadedPipeline, start: float | None, until: float | None) -> int | None:
    """How many records the range holds, when the source can tell (the local log can)."""
    path = local_log_path(loaded)
    source = loaded.config.source
    if path is None or not path.exists() or not isinstance(source, LocalSourceConfig):
        return None
    stream = source.stream
    log = LocalLog(path)
    try:
        total = 0
        for shard_id in log.shard_ids(stream):
            tip = log.last_seq(stream, shard_id)
            first = log.first_seq_at_or_after(stream, shard_id, start or 0.0)
            if first is None:
                continue
            after_end = log.first_seq_at_or_after(stream, shard_id, until) if until is not None else None
            # a block shares one arrival time, so the first block past ``until`` bounds the range
            last = tip if after_end is None else after_end - 1
            total += max(0, last - first + 1)
        return total
    finally:
        log.close()


class Progress:
    """Records read so far out of the range's size (when known), drawn as a bar on stderr."""

    def __init__(self, source: BoundedSource, total: int | None, *, enabled: bool) -> None:
        self.source = source
        self._total = total
        self._enabled = enabled
        self._started = time.monotonic()

    def draw(self, final: bool = False) -> None:
        if not self._enabled:
            return
        done = self.source.delivered
        elapsed = time.monotonic() - self._started
        rate = done / elapsed if elapsed > 0 else 0.0
        if self._total:
            shown = min(done, self._total)
            filled = int(30 * shown / self._total)
            line = f"[{'#' * filled}{'-' * (30 - filled)}] {shown:,}/{self._total:,} records  {rate:,.0f}/s"
        else:
            line = f"{done:,} records  {rate:,.0f}/s"
        sys.stderr.write("\r" + line + ("\n" if final else ""))
        sys.stderr.flush()

    async def run(self) -> None:
        while True:
            self.draw()
            await asyncio.sleep(0.2)


async def replay(
    loaded: LoadedPipeline, *, start: float | None, until: float | None, progress: bool = True,
) -> int:
    """Reprocess ``[start, until]`` into the sinks; returns the records read (all handled by then)."""
    folder = loaded.context.state_dir / "replay"
    folder.mkdir(parents=True, exist_ok=True)
    checkpoints = folder / f"replay-{os.getpid()}-{int(time.time() * 1000)}.sqlite3"
    pipeline = replay_pipeline(loaded, start, until, checkpoints)
    bar = Progress(cast(BoundedSource, pipeline.source), expected_records(loaded, start, until), enabled=progress)
    stop = asyncio.Event()
    await pipeline.open()
    drawing = asyncio.create_task(bar.run())
    try:
        await pipeline.run(stop, until_caught_up=True)
    finally:
        drawing.cancel()
        await asyncio.gather(drawing, return_exceptions=True)
        await pipeline.shutdown()
    bar.draw(final=True)
    remove_database(checkpoints)
    return bar.source.delivered


def remove_database(path: Path) -> None:
    """The replay's private checkpoints, once the range is done: the next replay starts afresh."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
