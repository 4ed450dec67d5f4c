"""``streamfn replay``: run a pipeline's handler and sinks again over a past range of its source.

A replay must overwrite what the live run wrote, never add beside it. Sink keys derive from a
batch's bounds, so the replay forms exactly the live run's batches: their bounds are read back
from the keys of the objects the sinks hold (``batch_bounds.py``) and handed to the engine as
pending batches, which it forms again whatever the batching limits say (as after a crash).
Records the live run did not write (batches with no output) form ordinary batches that end
before the next recorded one. The range is widened to whole batches at both ends: a batch
that began before ``--from`` is formed from its first record; one that ends after ``--to`` is
completed. By default the replay stops at the live checkpoint: what lies past it is the next
``run``'s to handle (``--past-checkpoint`` goes on to the tip).

Otherwise the replay is an ordinary pipeline run: its checkpoints are kept in a private file so
the live pipeline's progress is untouched, and each shard is read by this process alone: no
lease is taken and no consumer group joined (``standalone.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import msgspec

from ..config import LoadedPipeline
from ..connectors.local.log import LocalLog
from ..connectors.local.source import LocalSourceConfig
from ..connectors.local.store import LocalCheckpointStoreConfig
from ..engine.lanes import lane_of
from ..engine.pipeline import Pipeline
from ..protocols.checkpoint import Checkpoint, CheckpointStore
from ..protocols.source import ReadResult, ShardInfo, ShardReader, ShardTip, Source, StartingPosition
from ..records import Batch, Position, Record
from .batch_bounds import Bounds, recorded_batches
from .parts import build_store, local_log_path, local_store_path, source_kind
from .readonly import read_local_checkpoints
from .standalone import StandaloneAssigner

log = logging.getLogger("streamfn.replay")


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """What the replay does with one shard, decided before it starts."""

    #: Where its reader begins (widened back to the first record of a batch ``--from`` cut).
    start: StartingPosition
    #: The live batches to form again, in order; each begins at or after ``start``.
    batches: tuple[Bounds, ...] = ()
    #: Records at or below this are skipped: the rest of a batch whose first record is gone.
    skip_through: Position | None = None
    #: Nothing past this is handled (the live checkpoint) but the rest of a batch begun at or below it.
    stop: Position | None = None
    #: The live run handled nothing of this shard: there is nothing to replay.
    empty: bool = False


class BoundedReader(ShardReader):
    """A shard reader limited to the replay's range, in whole live batches.

    A record is past the range once it is past the plan's ``stop`` or arrived after ``until``
    (and so is every record after it: the range never has a gap). Past the range, only records
    completing a live batch begun inside it are delivered (with lanes, those of that batch's
    lane); the shard ends once none can. Ending the shard is safe: its ``SHARD_END`` lands in
    the replay's private checkpoints only.
    """

    def __init__(self, inner: ShardReader, plan: ShardPlan, until: float | None, lanes: int,
                 source: BoundedSource) -> None:
        self._inner = inner
        self._plan = plan
        self._until = until
        self._lanes = lanes
        self._source = source
        self._firsts = {first: last for first, last in plan.batches}
        self._open: dict[int, Position] = {}  # per lane, the last record of the live batch being formed
        self._past = False
        self._ended = plan.empty

    async def read(self, max_records: int, wait: float) -> ReadResult:
        if self._ended:
            return ReadResult([], shard_end=True)
        result: ReadResult = await self._inner.read(max_records, wait)
        kept: list[Record] = []
        for record in result.records:
            verdict = self._verdict(record)
            if verdict == "end":
                self._ended = True
                break
            if verdict == "keep":
                kept.append(record)
        self._source.delivered += len(kept)
        if self._ended or len(kept) < len(result.records):
            return ReadResult(kept, shard_end=self._ended or result.shard_end, behind_ms=result.behind_ms,
                              trimmed=result.trimmed)
        return result

    def _verdict(self, record: Record) -> str:
        """``keep``, ``skip`` or ``end`` (the shard's range is over)."""
        plan, position = self._plan, record.position
        if plan.skip_through is not None and position <= plan.skip_through:
            return "skip"
        lane = lane_of(record.partition_key, self._lanes) if self._lanes > 1 else 0
        opened = self._open.get(lane)
        if opened is not None and position > opened:
            del self._open[lane]
            opened = None
        if not self._past:
            self._past = (plan.stop is not None and position > plan.stop) or (
                self._until is not None and record.arrival_time > self._until)
        if not self._past:
            last = self._firsts.get(position)
            if last is not None:
                self._open[lane] = last
            return "keep"
        if opened is not None:
            return "keep"  # completes a live batch begun inside the range
        return "skip" if self._open else "end"

    async def close(self) -> None:
        await self._inner.close()


class BoundedSource(Source):
    """The pipeline's source with every reader following its shard's plan; everything else passes through."""

    def __init__(self, inner: Source, plans: dict[str, ShardPlan], until: float | None, lanes: int) -> None:
        self.inner = inner
        self.name = inner.name
        self.traits = inner.traits
        #: Per shard, filled in once the source is open (``plan_replay``), before any shard starts.
        self.plans = plans
        self._until = until
        self._lanes = lanes
        #: Records handed out by all readers so far (the replay's progress).
        self.delivered = 0

    @property
    def stream_arn(self) -> str:  # type: ignore[override]
        return self.inner.stream_arn

    async def open(self) -> None:
        await self.inner.open()

    async def list_shards(self) -> list[ShardInfo]:
        return await self.inner.list_shards()

    def lambda_event(self, batch: Batch) -> dict[str, Any]:
        return self.inner.lambda_event(batch)

    async def close(self) -> None:
        await self.inner.close()

    async def read_uncoordinated(self, shards: Sequence[ShardInfo]) -> asyncio.Task[None] | None:
        return await self.inner.read_uncoordinated(shards)

    async def shard_tips(self, shard_ids: Sequence[str]) -> dict[str, ShardTip]:
        return await self.inner.shard_tips(shard_ids)

    def reader(self, shard: ShardInfo, after: Position | None, start: StartingPosition) -> ShardReader:
        plan = self.plans.get(shard.shard_id)
        if plan is None:  # a shard that appeared since the plan was made (a split): the live run has not read it
            plan = ShardPlan(start=start, empty=True)
        if after is None and start.kind != "at_sequence":
            start = plan.start
        return BoundedReader(self.inner.reader(shard, after, start), plan, self._until, self._lanes, self)


class SeededStore(CheckpointStore):
    """The replay's private checkpoint store, whose shards start with the live batches to form again
    recorded as pending: the engine then forms exactly these (as it does after a crash)."""

    def __init__(self, inner: CheckpointStore, plans: Mapping[str, ShardPlan]) -> None:
        self._inner = inner
        self._plans = plans

    async def open(self) -> None:
        await self._inner.open()

    async def load(self, shard_id: str) -> Checkpoint | None:
        checkpoint = await self._inner.load(shard_id)
        plan = self._plans.get(shard_id)
        if checkpoint is None and plan is not None and plan.batches:
            return Checkpoint(pending=plan.batches)
        return checkpoint

    async def save(self, shard_id: str, checkpoint: Checkpoint) -> None:
        await self._inner.save(shard_id, checkpoint)

    async def record_pending(self, shard_id: str, first: Position, last: Position) -> None:
        await self._inner.record_pending(shard_id, first, last)

    async def flush(self) -> None:
        await self._inner.flush()

    async def close(self) -> None:
        await self._inner.close()


def replay_config(loaded: LoadedPipeline, start: float | None) -> LoadedPipeline:
    """The pipeline file's config, starting at ``start`` (None: the trim horizon)."""
    config = msgspec.structs.replace(
        loaded.config,
        source=loaded.config.source.with_pipeline_start(),  # a source's own start (Kafka's) would win over --from
        starting_position="trim_horizon" if start is None else "at_timestamp",
        starting_timestamp=start,
    )
    return LoadedPipeline(config=config, path=loaded.path)


def replay_pipeline(loaded: LoadedPipeline, start: float | None, until: float | None, checkpoints: Path) -> Pipeline:
    """A Pipeline over the replay range whose shards all run here (no lease, no consumer group).

    Built as the daemon builds it, then three parts are swapped: the source (each shard's reader
    bounded by its plan, filled in by ``plan_replay`` once the source is open), the checkpoint
    store (a private file seeded with the live batches; the configured one is never written) and
    the assigner (every shard here).
    """
    replayed = replay_config(loaded, start)
    pipeline = Pipeline(replayed)
    inner = pipeline.source
    plans: dict[str, ShardPlan] = {}
    pipeline.source = BoundedSource(inner, plans, until, pipeline.env.lanes)
    private = LocalCheckpointStoreConfig(path=str(checkpoints)).build(replayed.context)
    pipeline.store = SeededStore(private, plans)
    pipeline.env = dataclasses.replace(pipeline.env, source=pipeline.source, store=pipeline.store)
    pipeline.assigner = StandaloneAssigner(pipeline.source)
    return pipeline


#: Reads a probe makes for a shard's first record in range, and how long each waits.
PROBE_READS = 5
PROBE_WAIT = 0.05


async def first_record(source: Source, shard: ShardInfo, start: StartingPosition) -> Record | None:
    """The first record a reader starting at ``start`` delivers (None: none is there yet)."""
    reader = source.reader(shard, None, start)
    try:
        for _ in range(PROBE_READS):
            result = await reader.read(1, PROBE_WAIT)
            if result.records:
                return result.records[0]
            if result.shard_end or result.behind_ms == 0:
                return None
        return None
    finally:
        await reader.close()


async def live_checkpoints(loaded: LoadedPipeline, source: Source, shard_ids: list[str]) -> dict[str, Checkpoint]:
    """The live pipeline's checkpoints, read without writing (the local file is opened read-only)."""
    path = local_store_path(loaded)
    if path is not None:
        return read_local_checkpoints(path, loaded.config.name).checkpoints
    store = build_store(loaded, source)
    await store.open()
    try:
        found = {}
        for shard_id in shard_ids:
            checkpoint = await store.load(shard_id)
            if checkpoint is not None:
                found[shard_id] = checkpoint
        return found
    finally:
        await store.close()


async def plan_shard(source: Source, shard: ShardInfo, start: StartingPosition, checkpoint: Checkpoint | None,
                     recorded: list[Bounds], *, past_checkpoint: bool, probe: bool) -> ShardPlan:
    """Where one shard's replay begins and ends, and the live batches it forms again."""
    stop = None
    if not past_checkpoint and not (checkpoint is not None and checkpoint.shard_end):
        if checkpoint is None or checkpoint.position is None:
            return ShardPlan(start=start, empty=True)
        stop = checkpoint.position
        recorded = [bounds for bounds in recorded if bounds[0] <= stop]
    if not probe:  # a Kafka partition is read only once the fetch task runs: take the range as it is
        return ShardPlan(start=start, batches=tuple(recorded), stop=stop)
    first = await first_record(source, shard, start)
    if first is None:
        return ShardPlan(start=start, stop=stop)
    position = first.position
    cut = [bounds for bounds in recorded if bounds[0] < position <= bounds[1]]
    if not cut:
        return ShardPlan(start=start, batches=tuple(b for b in recorded if b[0] >= position), stop=stop)
    begin = min(first for first, _ in cut)
    again = await first_record(source, shard, StartingPosition("at_sequence", position=begin))
    if again is not None and again.position == begin:  # widen back to the whole batch
        at = StartingPosition("at_sequence", position=begin)
        return ShardPlan(start=at, batches=tuple(b for b in recorded if b[0] >= begin), stop=stop)
    through = max(last for _, last in cut)
    log.warning("the start of a live batch is gone from the source (retention): the rest of it is not replayed,"
                " so that its object is not written under other bounds",
                extra={"pipeline": source.name, "shard": shard.shard_id, "first_sequence": begin.sequence,
                       "last_sequence": through.sequence})
    return ShardPlan(start=start, batches=tuple(b for b in recorded if b[0] > through), skip_through=through,
                     stop=stop)


async def plan_replay(loaded: LoadedPipeline, pipeline: Pipeline, *, past_checkpoint: bool) -> dict[str, ShardPlan]:
    """Every shard's plan, from the live checkpoints and the objects the sinks hold (all opened)."""
    bounded = cast(BoundedSource, pipeline.source)
    source = bounded.inner
    shards = await source.list_shards()
    live = await live_checkpoints(loaded, source, [shard.shard_id for shard in shards])
    recorded = await recorded_batches(loaded.config.sinks, pipeline.sinks, pipeline=pipeline.env.pipeline,
                                      stream=pipeline.env.stream, lanes=pipeline.env.lanes)
    probe = source_kind(loaded.config.source) != "kafka"
    return {shard.shard_id: await plan_shard(source, shard, pipeline.env.starting, live.get(shard.shard_id),
                                             recorded.get(shard.shard_id, []), past_checkpoint=past_checkpoint,
                                             probe=probe)
            for shard in shards}


def expected_records(loaded: LoadedPipeline, plans: Mapping[str, ShardPlan], start: float | None,
                     until: float | None) -> int | None:
    """About how many records the range holds, when the source can tell (the local log can)."""
    path = local_log_path(loaded)
    source = loaded.config.source
    if path is None or not path.exists() or not isinstance(source, LocalSourceConfig):
        return None
    stream = source.stream
    log = LocalLog(path)
    try:
        total = 0
        for shard_id, plan in plans.items():
            if plan.empty:
                continue
            tip = log.last_seq(stream, shard_id)
            at = plan.start.position
            first = at.sequence if at is not None else log.first_seq_at_or_after(stream, shard_id, start or 0.0)
            if first is None:
                continue
            if plan.skip_through is not None:
                first = max(first, plan.skip_through.sequence + 1)
            after_end = log.first_seq_at_or_after(stream, shard_id, until) if until is not None else None
            # a block shares one arrival time, so the first block past ``until`` bounds the range
            last = tip if after_end is None else after_end - 1
            if plan.stop is not None:
                last = min(last, plan.stop.sequence)
            for first_of, last_of in plan.batches:  # a live batch the end cuts is completed
                if first_of.sequence <= last < last_of.sequence:
                    last = last_of.sequence
            total += max(0, last - first + 1)
        return total
    finally:
        log.close()


class Progress:
    """Records read so far out of the range's size (when known), drawn as a bar on stderr, only on a
    terminal: redrawn lines in a file or a log collector are noise, and in ``--log-format json``
    stderr carries JSON lines only (the CLI passes ``enabled=False`` there)."""

    def __init__(self, source: BoundedSource, total: int | None, *, enabled: bool) -> None:
        self.source = source
        self._total = total
        self._enabled = enabled and sys.stderr.isatty()
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
    loaded: LoadedPipeline, *, start: float | None, until: float | None, past_checkpoint: bool = False,
    progress: bool = True,
) -> int:
    """Reprocess ``[start, until]`` (in whole live batches, up to the live checkpoint unless
    ``past_checkpoint``) into the sinks; returns the records read (all handled by then)."""
    folder = loaded.context.state_dir / "replay"
    folder.mkdir(parents=True, exist_ok=True)
    checkpoints = folder / f"replay-{os.getpid()}-{int(time.time() * 1000)}.sqlite3"
    pipeline = replay_pipeline(loaded, start, until, checkpoints)
    bounded = cast(BoundedSource, pipeline.source)
    stop = asyncio.Event()
    await pipeline.open()
    drawing: asyncio.Task[None] | None = None
    try:
        bounded.plans.update(await plan_replay(loaded, pipeline, past_checkpoint=past_checkpoint))
        log.info("replay planned", extra={
            "pipeline": loaded.config.name, "live_batches": sum(len(p.batches) for p in bounded.plans.values()),
            "shards_never_run": sum(p.empty for p in bounded.plans.values())})
        bar = Progress(bounded, expected_records(loaded, bounded.plans, start, until), enabled=progress)
        drawing = asyncio.create_task(bar.run())
        await pipeline.run(stop, until_caught_up=True)
    finally:
        if drawing is not None:
            drawing.cancel()
            await asyncio.gather(drawing, return_exceptions=True)
        await pipeline.shutdown()
    bar.draw(final=True)
    remove_database(checkpoints)
    return bounded.delivered


def remove_database(path: Path) -> None:
    """The replay's private checkpoints, once the range is done: the next replay starts afresh."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
