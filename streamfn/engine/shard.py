"""One shard's loop, top to bottom: read, batch, filter, invoke, write, checkpoint.

Within a shard, batch N+1 is not started until batch N has succeeded or been handed to the
on-failure destination; the checkpoint moves only after the sinks acknowledged the output.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..backoff import Backoff
from ..errors import AnswerError, HandlerError, SinkError
from ..handler_api import Context
from ..protocols.checkpoint import Checkpoint, CheckpointStore
from ..protocols.destination import Destination, FailedBatch
from ..protocols.sink import Sink, SinkBatch
from ..protocols.source import ShardInfo, ShardReader, Source, StartingPosition
from ..records import Batch, Position, Record, arrival_of, position_of
from . import tracing, windows
from .batching import IDLE_WAIT, Batcher, BatchLimits, RecordFilter, Unit, read_size
from .capture import CallScope, Mode
from .invoke import Invoker
from .lanes import LaneQueue, lane_of
from .outcomes import (
    Dispose,
    Done,
    Failed,
    PartlyFailed,
    Retry,
    Segment,
    Step,
    after_call,
    expire,
)
from .policy import FailurePolicy, retry_backoff
from .progress import ShardProgress
from .stats import ShardStats
from .versioned import VersionedInvoker
from .windows import FINAL_CALL_GRACE, WindowState

log = logging.getLogger("streamfn.shard")

Phase = Literal["starting", "reading", "processing", "waiting", "stopped"]

#: Longest a lane runs batches without letting other tasks run (seconds).
YIELD_EVERY = 0.001


@dataclass(frozen=True, slots=True)
class ShardEnv:
    """Everything a shard runner needs from its pipeline; shared by all shards of it."""

    pipeline: str
    stream: str
    source_kind: str
    source: Source
    invoker: Invoker | VersionedInvoker
    sinks: Sequence[Sink]
    store: CheckpointStore
    destination: Destination | None
    limits: BatchLimits
    policy: FailurePolicy
    starting: StartingPosition
    timeout: float
    accept: RecordFilter | None = None
    lanes: int = 1
    tumbling_window: float = 0.0
    handler_output: Mode = "capture"
    #: The pipeline's function ARN in failure records (``function_arn``, or the local form).
    function_arn: str = ""

    @property
    def keyed_sinks(self) -> bool:
        return any(sink.keyed_by_batch for sink in self.sinks)


class Abandoned(Exception):
    """The runner was asked to stop while its batch could not finish: leave it unhandled."""


class LaneWorker:
    """Handles the batches of one lane of a shard (the whole shard when there is one lane).

    ``phase`` tells whether a stop may interrupt at once (reading, waiting between retries)
    or must let the in-flight batch finish first (processing).
    """

    def __init__(
        self,
        shard_id: str,
        env: ShardEnv,
        batcher: Batcher,
        progress: ShardProgress,
        lane: int,
        window: WindowState | None = None,
    ) -> None:
        self.shard_id = shard_id
        self.env = env
        self.stats = progress.stats
        self.phase: Phase = "starting"
        self.idle = False
        self.finished = False
        self.stopping = False
        self._batcher = batcher
        self._progress = progress
        self._lane = lane
        self._position = progress.position  # this lane's own progress (the shard's is the watermark)
        self._window = window
        self._backoff = retry_backoff(env.policy)
        self._slot = env.invoker.slot()  # this lane's calls never overlap, even past a timeout
        self._yield_at = 0.0
        self._traced = False  # tracing was on when this lane's current batch was read

    async def run(self) -> None:
        try:
            await self._loop()
        except (asyncio.CancelledError, Abandoned):
            if not self.stopping:
                raise
        finally:
            self.phase = "stopped"

    async def _loop(self) -> None:
        batcher = self._batcher
        while not self.stopping:
            self.phase = "reading"
            traced = self._traced = tracing.enabled()  # (a batch is traced if tracing was on when its read began)
            read_started = time.time_ns() if traced else 0  # the start of its trace span (engine/tracing.py)
            unit = await batcher.next()
            if self.stats.blocked_cause in _READ_CAUSES:
                self.stats.mark_unblocked()  # reading works again after a failed start
            stats = self.stats
            stats.behind_ms = batcher.behind_ms
            if batcher.filtered or batcher.trimmed:
                filtered, trimmed = batcher.take_counts()
                stats.filtered += filtered
                stats.trimmed += trimmed
            if unit is None:
                window = self._window
                if window is not None and time.time() >= window.end + FINAL_CALL_GRACE:
                    self.phase = "processing"
                    await self._close_window()
                self.idle = True
                continue
            self.phase = "processing"
            self.idle = False
            if traced:
                with tracing.batch(self.env.pipeline, self.shard_id, unit.records, read_started):
                    await self._handle_unit(unit)
            else:  # no context manager per batch while tracing is off
                await self._handle_unit(unit)
            # Yield at least every YIELD_EVERY seconds: with records always ready and an async handler
            # nothing else would suspend, and other shards, the checkpoint flusher and signals would
            # starve. Not after every batch: a loop turn is ~5 % of a one-record batch's cost.
            now = time.monotonic()
            if now >= self._yield_at:
                self._yield_at = now + YIELD_EVERY
                await asyncio.sleep(0)
            if unit.shard_end:
                if self._window is not None:
                    await self._close_window()
                self.finished = True
                return

    async def _enter_window(self, first: Record) -> None:
        """Open the window of ``first``, closing the previous one with a final call if still open."""
        start = self._batcher.window_start(first)
        if self._window is not None and self._window.start != start:
            await self._close_window()
        if self._window is None:
            self._window = WindowState(start=start, size=self.env.tumbling_window)

    async def _close_window(self) -> None:
        """The window's final call, with no records: its records were all handled already.

        Its output is written under the key of the window's last record marked ``window_final``,
        never under that record's own batch key (which a one-record batch would share)."""
        window, env = self._window, self.env
        assert window is not None
        backoff = retry_backoff(env.policy)
        while True:
            context = Context(pipeline=env.pipeline, shard_id=self.shard_id, attempt=0, timeout=env.timeout,
                              state=window.state, window=window.bounds, is_final=True,
                              terminated_early=window.terminated_early)
            try:
                if self._slot.busy:
                    await self._wait_for_stuck_call()
                with CallScope(env.pipeline, self.shard_id, (), context, env.handler_output):
                    result = await self._slot.call(Batch(self.shard_id, []), context)
                if result.items and self._position is not None:
                    last = Record(self.shard_id, self._position.sequence, "", b"", window.end,
                                  self._position.sub_sequence)
                    await self._emit([last], result.items, window_final=True)
            except (HandlerError, SinkError) as exc:  # nothing to dispose of: retry until it works
                self._block("sink" if isinstance(exc, SinkError) else "handler", str(exc), [], 1)
                await self._wait(backoff.next_delay())
                continue
            break
        self._window = None
        self._unblocked(backoff)
        if self._position is not None:
            await self._checkpoint(self._position)

    async def _wait_for_stuck_call(self) -> None:
        """A timed-out plain-function call still running in its thread holds this lane (and only
        this lane): it shows as "handler stuck" until it ends; a stop request abandons the wait."""
        if self.stopping:
            raise Abandoned
        self.stats.mark_blocked("handler stuck", f"a call past its {self.env.timeout:g}s timeout is still running")
        log.warning("handler stuck: a timed-out call is still running; the lane waits for it",
                    extra={"pipeline": self.env.pipeline, "shard": self.shard_id})
        self.phase = "waiting"
        try:
            await self._slot.wait_idle()
        except asyncio.CancelledError:
            if self.stopping:
                raise Abandoned from None
            raise
        self.phase = "processing"
        self.stats.mark_unblocked("handler stuck")

    def _window_context(self, attempts: int, final: bool) -> Context:
        """The context of a call inside a tumbling window (the window's state and bounds)."""
        env, window = self.env, self._window
        assert window is not None
        return Context(pipeline=env.pipeline, shard_id=self.shard_id, attempt=attempts, timeout=env.timeout,
                       function_arn=env.function_arn, state=window.state, window=window.bounds, is_final=final,
                       terminated_early=window.terminated_early)

    async def _handle_unit(self, unit: Unit) -> None:
        """Handle a formed batch to completion, every record done or disposed of; then checkpoint
        through what the filter skipped after it (``unit.through``).

        Output is written once per *write unit*, under the unit's own bounds: at first the whole
        batch, whatever bisecting or partial failures happened inside it, so a batch formed again
        after a crash overwrites its own object even if its calls fail differently this time.
        Only output a sink refuses splits a unit (with ``bisect_on_error``), and the halves are
        recorded as pending before they are written. A ``replayed`` batch is written even when it
        yields nothing this time, so that its object from before the restart cannot outlive it.
        (One coroutine for all of it: a frame less per batch.)
        """
        records, stats = unit.records, self.stats
        if records:
            stats.read += len(records)
            stats.batches += 1
            if self.env.tumbling_window > 0:
                await self._enter_window(records[0])
            final, replayed = unit.window_closed or unit.shard_end, unit.replayed
            units: deque[Segment] | None = None  # the write units left after the first (split ones), made if any
            part: Sequence[Record] = records
            attempts = 0
            while True:
                saved = None if self._window is None else self._window_snapshot()
                done_records, items = await self._run_unit(part, attempts, final=final and not units)
                try:
                    if self.env.sinks:  # (no sinks: not even the call)
                        await self._emit(part, items, overwrite=replayed and part is records)
                except SinkError as exc:
                    self._restore_window(saved)
                    steps = after_call(Segment(done_records, attempts), Failed(f"sink refused the output: {exc}"),
                                       self.env.policy)
                    self._block("sink", str(exc), done_records, attempts + 1)
                    if units is None:
                        units = deque()
                    wait = await self._perform(steps, units)
                    if wait:
                        await self._wait(self._backoff.next_delay())
                else:
                    stats.handled += len(done_records)
                    await self._checkpoint(position_of(part, -1))
                    stats.observe_done(arrival_of(part, 0), len(done_records))
                if not units:
                    break
                part, attempts = units.popleft()
            if self._backoff.failures or stats.blocked_since is not None or stats.attempt:
                self._unblocked(self._backoff)  # (cheap to skip when nothing failed)
        through = unit.through
        if through.sequence >= 0 and (self._position is None or through > self._position):
            await self._checkpoint(through)

    async def _run_unit(
        self, records: Sequence[Record], attempts: int, *, final: bool
    ) -> tuple[Sequence[Record], list[Any]]:
        """Call the handler on a unit's records until each is done or disposed of: the records done
        and their output. The common case, one call that handles them all, makes no copies."""
        env, stats = self.env, self.stats
        todo: deque[Segment] | None = None  # what failures left to call again, in shard order (made on one)
        done: list[Done] | None = None  # what is done, once more than one call was needed
        expiring = env.policy.max_record_age > 0
        while True:
            if expiring:
                disposal, fresh = expire(Segment(records, attempts), env.policy)
                if disposal is not None:
                    await self._dispose(disposal)
                records = [] if fresh is None else fresh.records
            if records:
                stats.attempt = attempts
                if self._window is None:
                    context = Context(pipeline=env.pipeline, shard_id=self.shard_id, attempt=attempts,
                                      timeout=env.timeout, function_arn=env.function_arn)
                else:
                    context = self._window_context(attempts, final and not todo)
                if self._slot.busy:
                    await self._wait_for_stuck_call()
                calls_due = stats.calls_due
                started = time.monotonic()
                calls_due[self._lane] = started + env.timeout  # past it: shown as stuck
                try:
                    with CallScope(env.pipeline, self.shard_id, records, context, env.handler_output):
                        result = await self._slot.call(
                            records if type(records) is Batch else Batch(self.shard_id, records), context)
                except HandlerError as exc:
                    outcome: Failed | PartlyFailed | None = Failed(
                        str(exc), function_error=not isinstance(exc, AnswerError))
                else:
                    if result.failed_at is None:  # the common case, as after_call decides it: all done
                        outcome = None
                    else:
                        outcome = PartlyFailed(result.failed_at, result.items, result.state)
                finally:
                    del calls_due[self._lane]
                stats.observe_handler(time.monotonic() - started)
                if outcome is None:
                    if self._window is not None:
                        self._keep_window_state(result.state, context.is_final)
                    if done is None and not todo:
                        return records, result.items  # the common case: no copies on the per-record path
                    if done is None:
                        done = []
                    done.append(Done(records, result.items, result.state))
                else:
                    if done is None:
                        done = []
                    if todo is None:
                        todo = deque()
                    await self._after_failure(Segment(records, attempts), outcome, done, todo)
            if not todo:
                break
            records, attempts = todo.popleft()
        if done is None:
            return [], []  # every record was disposed of
        if len(done) == 1:
            return done[0].records, done[0].items
        return [r for step in done for r in step.records], [item for step in done for item in step.items]

    async def _after_failure(self, segment: Segment, outcome: Failed | PartlyFailed, done: list[Done],
                             todo: deque[Segment]) -> None:
        """Perform what ``after_call`` decides after a failed call: what got done joins ``done``,
        retries join ``todo`` (first, in shard order), disposals go to the destination."""
        steps = after_call(segment, outcome, self.env.policy)
        for step in steps:
            if isinstance(step, Done):
                done.append(step)
                # A final call closes its window only if nothing of it is left to retry.
                self._keep_window_state(step.state, False)
        error = outcome.error if isinstance(outcome, Failed) else "partial batch failure"
        failed = segment.records if isinstance(outcome, Failed) else [
            r for r in segment.records if r.position >= outcome.failed_at]
        self._block("handler", error, failed, segment.attempts + 1, bisected=_splits(steps))
        if await self._perform(steps, todo):
            await self._wait(self._backoff.next_delay())

    async def _perform(self, steps: list[Step], todo: deque[Segment]) -> bool:
        """Queue retries (in shard order, first), dispose of what was given up; True: back off first."""
        backoff = False
        retries: list[Segment] = []
        for step in steps:
            if isinstance(step, Retry):
                retries.extend(step.segments)
                backoff = backoff or step.backoff
            elif isinstance(step, Dispose):
                await self._dispose(step)
        todo.extendleft(reversed(retries))
        return backoff and bool(retries)

    def _window_snapshot(self) -> tuple[WindowState, Any, bool] | None:
        window = self._window
        return None if window is None else (window, window.state, window.terminated_early)

    def _restore_window(self, saved: tuple[WindowState, Any, bool] | None) -> None:
        """Undo what a unit's calls did to the window: the unit runs again from the same state."""
        if saved is not None:
            window, state, terminated_early = saved
            window.state, window.terminated_early = state, terminated_early
            self._window = window

    def _keep_window_state(self, state: Any, final: bool) -> None:
        if self._window is None:
            return
        if final:
            self._window = None  # the window's last call: the next record opens a new one
        else:
            self._window.keep(state)

    def _block(self, cause: str, error: str, records: Sequence[Record], attempts: int, *,
               bisected: bool = False) -> None:
        """The shard is retrying (or splitting) instead of moving on: count it, show it, log it."""
        stats = self.stats
        stats.failed += len(records)
        stats.retries += 1
        stats.attempt = attempts
        stats.mark_blocked(cause, error)
        log.warning(
            "batch failed; %s", "bisecting" if bisected else "will retry",
            extra={
                "pipeline": self.env.pipeline, "shard": self.shard_id, "cause": cause,
                "first_sequence": records[0].identifier if records else None,
                "last_sequence": records[-1].identifier if records else None,
                "records": len(records), "attempt": attempts, "error": error,
            },
        )

    def _unblocked(self, backoff: Backoff) -> None:
        backoff.reset()
        stats = self.stats
        if stats.blocked_since is not None or stats.attempt:  # cheap when nothing failed
            stats.mark_unblocked()
            stats.attempt = 0

    async def _emit(self, records: Sequence[Record], items: list[Any], *, window_final: bool = False,
                    overwrite: bool = False) -> None:
        """Write the output to every sink; return once all acknowledged it durably.

        Raises SinkError when a sink refuses the output as it is (the caller fails the unit);
        retryable failures are retried here, with the shard shown as blocked meanwhile.
        """
        env = self.env
        if not env.sinks or not (items or (overwrite and env.keyed_sinks)):
            return
        first, last = position_of(records, 0), position_of(records, -1)
        if env.keyed_sinks:
            await self._progress.record_pending(first, last, self._wait)
        batch = SinkBatch(
            pipeline=env.pipeline, stream=env.stream, shard_id=self.shard_id,
            first=first, last=last, first_arrival=arrival_of(records, 0), items=items, window_final=window_final,
        )
        started = time.perf_counter()
        write = self._write_sinks(batch, bool(items))
        await (_traced("sink write", write) if tracing.enabled() else write)
        self.stats.sink_seconds += time.perf_counter() - started

    async def _write_sinks(self, batch: SinkBatch, any_items: bool) -> None:
        """Every sink that takes this output (a keyed sink takes even none: it overwrites a replayed object)."""
        persist, wait = self._progress.persist, self._wait
        for sink in self.env.sinks:
            if any_items or sink.keyed_by_batch:
                await persist(sink.write, "sink", wait, batch)

    async def _dispose(self, step: Dispose) -> None:
        env, records = self.env, step.records
        if env.destination is None:  # the pipeline refuses limits without a destination
            raise RuntimeError("a failure limit was hit but no on-failure destination is configured")
        failure = FailedBatch(
            pipeline=env.pipeline, stream=env.stream, source_kind=env.source_kind, shard_id=self.shard_id,
            condition=step.condition, records=list(records), invoke_count=step.invoke_count, error=step.error,
            function_error=step.function_error, failed_at=time.time(),
            batch_info_key=env.source.traits.batch_info_key, stream_arn=env.source.stream_arn,
            function_arn=env.function_arn, payload=env.source.lambda_event(Batch(self.shard_id, records)),
        )
        destination = env.destination
        await self._progress.persist(lambda: destination.send(failure), "destination", self._wait)
        self.stats.sent_to_destination += len(records)
        log.error(
            "records sent to the on-failure destination",
            extra={"pipeline": env.pipeline, "shard": self.shard_id, "condition": step.condition,
                   "first_sequence": records[0].identifier, "last_sequence": records[-1].identifier,
                   "records": len(records), "error": step.error},
        )

    async def _wait(self, delay: float) -> None:
        """Sleep between retries; a stop request abandons the batch here rather than wait."""
        if self.stopping:
            raise Abandoned
        self.phase = "waiting"
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            if self.stopping:
                raise Abandoned from None
            raise
        self.phase = "processing"

    def _checkpoint(self, position: Position) -> Awaitable[None]:
        """The checkpoint write of this lane's progress up to ``position``, to await at once (a plain
        function returning the write: no coroutine frame of its own per batch)."""
        self._position = position
        window = self._window
        write = self._progress.lane_done(self._lane, position, None if window is None else windows.dump(window),
                                         self._wait)
        return _traced("checkpoint", write) if self._traced else write


async def _traced(name: str, write: Awaitable[None]) -> None:
    with tracing.span(name):
        await write


#: Blocked causes that a successful read clears (set by the pipeline when a runner failed).
_READ_CAUSES = frozenset({"source", "shard runner"})


def _splits(steps: list[Step]) -> bool:
    return any(isinstance(step, Retry) and not step.backoff for step in steps)


def resume_point(
    checkpoint: Checkpoint | None, starting: StartingPosition
) -> tuple[Position | None, StartingPosition]:
    """Where a shard's reader starts, as ``Source.reader``'s ``(after, start)``.

    Strictly after the checkpoint; AT the first record of a recorded batch that begins at or below
    it (a lane finished past it while another lagged: the batch is formed again); at ``starting``
    when nothing was handled. Only positions of records the source handed out are named, never
    arithmetic on them: Kinesis and DynamoDB Streams refuse numbers they did not hand out.
    """
    position = checkpoint.position if checkpoint else None
    if checkpoint is None or position is None:
        return None, starting
    firsts = [first for first, last in checkpoint.pending if last > position]
    if firsts and min(firsts) <= position:
        return None, StartingPosition("at_sequence", position=min(firsts))
    return position, starting


class ShardRunner:
    """Processes one shard until stopped or until the shard ends, over one lane or several."""

    def __init__(self, shard: ShardInfo, env: ShardEnv, stats: ShardStats | None = None) -> None:
        self.shard = shard
        self.env = env
        self.stats = stats or ShardStats(shard.shard_id)  # a restarted runner keeps its shard's record
        self.finished = False
        self.stopping = False
        self._workers: list[LaneWorker] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._dispatcher: asyncio.Task[None] | None = None
        # With lanes, idle (caught up) only once a read of the shard came back empty: lanes are
        # idle from the start, before the first (possibly slow) read delivered anything.
        self._dispatcher_idle = env.lanes == 1
        self._progress: ShardProgress | None = None

    @property
    def shard_id(self) -> str:
        return self.shard.shard_id

    @property
    def phase(self) -> Phase:
        if any(w.phase == "processing" for w in self._workers):
            return "processing"
        return "reading" if self._workers else "starting"

    @property
    def idle(self) -> bool:
        return bool(self._workers) and self._dispatcher_idle and all(w.idle or w.finished for w in self._workers)

    @property
    def ending(self) -> bool:
        """Every record of the closed shard is handled: it is saving SHARD_END and will stop, and
        the children it unblocks are not started yet (so the pipeline is not caught up)."""
        return self.finished or (bool(self._workers) and all(w.finished for w in self._workers))

    async def run(self) -> None:
        env = self.env
        checkpoint = await env.store.load(self.shard_id)
        if checkpoint is not None and checkpoint.shard_end:
            self.finished = True
            return
        position = checkpoint.position if checkpoint else None
        progress = self._progress = ShardProgress(env.pipeline, self.shard_id, env.store, env.policy, self.stats,
                                                  env.lanes, position)
        # Batches whose output may exist past the checkpoint. With lanes one may start below it
        # (its lane finished it while another lane lagged): reading then restarts at its first record.
        pending = sorted(
            b for b in (checkpoint.pending if checkpoint else ()) if position is None or b[1] > position
        )
        read_after, start = resume_point(checkpoint, self._starting_position())
        reader = env.source.reader(self.shard, read_after, start)
        if position is None and start.kind != "trim_horizon":
            await self._pin_start(reader)
        try:
            if env.lanes == 1:
                batcher = Batcher(reader, env.limits, accept=env.accept, replay=deque(pending),
                                  tumbling_window=env.tumbling_window, shard_id=self.shard_id)
                window = windows.load(checkpoint.window_state if checkpoint else None, env.tumbling_window)
                self._workers = [LaneWorker(self.shard_id, env, batcher, progress, 0, window)]
            else:
                self._start_lanes(reader, progress, pending)
            await self._run_workers()
            if all(w.finished for w in self._workers) and not self.stopping:
                await progress.save(Checkpoint(position=progress.position, shard_end=True), asyncio.sleep)
                self.finished = True
                log.info("shard ended", extra={"pipeline": env.pipeline, "shard": self.shard_id})
        finally:
            if self._dispatcher is not None:
                self._dispatcher.cancel()
                await asyncio.gather(self._dispatcher, return_exceptions=True)
            await reader.close()

    async def _pin_start(self, reader: ShardReader) -> None:
        """Checkpoint where a ``latest``/``at_timestamp`` start begins, when the reader knows it:
        otherwise a restart of a shard that saw no record yet would start at a later "latest"
        and skip what arrived in between."""
        after = reader.start_position()
        if after is not None and self._progress is not None:
            await self._progress.save(Checkpoint(position=after), asyncio.sleep)

    def _starting_position(self) -> StartingPosition:
        """Where a shard without checkpoint starts: a store's reset (``checkpoints reset``) first,
        then trim horizon for a child shard (its parents are done, nothing of it was read), then
        the pipeline's starting position."""
        position = self.env.store.starting_position(self.shard_id)
        if position is not None:
            return position
        if self.shard.parent_ids:
            return StartingPosition("trim_horizon")
        return self.env.starting

    def _start_lanes(
        self, reader: ShardReader, progress: ShardProgress, pending: list[tuple[Position, Position]]
    ) -> None:
        env = self.env
        capacity = max(env.limits.max_records * 2, 100)
        queues = [LaneQueue(capacity) for _ in range(env.lanes)]
        replays: list[deque[tuple[Position, Position]]] = [deque() for _ in range(env.lanes)]
        for lane, queue in enumerate(queues):
            batcher = Batcher(queue, env.limits, accept=env.accept, replay=replays[lane], shard_id=self.shard_id)
            self._workers.append(LaneWorker(self.shard_id, env, batcher, progress, lane))
        self._dispatcher = asyncio.create_task(
            self._dispatch(reader, queues, replays, deque(pending), progress), name=f"dispatch:{self.shard_id}"
        )

    async def _dispatch(
        self,
        reader: ShardReader,
        queues: list[LaneQueue],
        replays: list[deque[tuple[Position, Position]]],
        pending: deque[tuple[Position, Position]],
        progress: ShardProgress,
    ) -> None:
        """Read the shard and route each record to its key's lane, in shard order."""
        lanes, watermark, done_through = len(queues), progress.watermark, progress.position
        replaying: dict[int, tuple[Position, Position]] = {}
        size = read_size(self.env.limits)
        while True:
            result = await reader.read(size, IDLE_WAIT)
            self._dispatcher_idle = not result.records
            self.stats.trimmed += result.trimmed
            for record in result.records:
                lane = lane_of(record.partition_key, lanes)
                position = record.position
                while pending and pending[0][0] <= position:
                    bounds = pending.popleft()
                    if bounds[0] == position:  # a recorded batch starts here: its lane must form it again
                        replays[lane].append(bounds)
                        replaying[lane] = bounds
                if done_through is not None and position <= done_through:
                    covering = replaying.get(lane)
                    if covering is None or position > covering[1]:
                        continue  # done before the restart, and no recorded batch needs it again
                else:
                    watermark.dispatched(position, lane)
                queues[lane].put(record)
            if result.shard_end:
                for queue in queues:
                    queue.end()
                return
            for queue in queues:
                await queue.has_room()

    async def _run_workers(self) -> None:
        self._tasks = [asyncio.create_task(w.run(), name=f"lane:{self.shard_id}") for w in self._workers]
        waiting = list(self._tasks)
        if self._dispatcher is not None:
            waiting.append(self._dispatcher)
        try:
            while True:
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    waiting.remove(task)
                    if not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                if all(t.done() for t in self._tasks):
                    return
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def request_stop(self, *, abandon: bool = False) -> None:
        """Stop reading; lanes in the middle of a batch finish it unless ``abandon``."""
        self.stopping = True
        if self._dispatcher is not None:
            self._dispatcher.cancel()
        for worker, task in zip(self._workers, self._tasks, strict=False):
            worker.stopping = True
            if abandon or worker.phase != "processing":
                task.cancel()
