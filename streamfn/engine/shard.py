"""One shard's loop, top to bottom: read, batch, filter, invoke, write, checkpoint.

Within a shard, batch N+1 is not started until batch N has succeeded or been handed to the
on-failure destination; the checkpoint moves only after the sinks acknowledged the output.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..backoff import Backoff
from ..checkpoints.base import Checkpoint, CheckpointStore
from ..destinations.base import Condition, Destination, FailedBatch
from ..errors import HandlerError, LeaseLostError
from ..handler_api import Context
from ..records import Batch, Position, Record
from ..sinks.base import Sink, SinkBatch
from ..sources.base import ShardInfo, ShardReader, Source, StartingPosition
from . import windows
from .batching import IDLE_WAIT, Batcher, BatchLimits, RecordFilter, Unit
from .invoke import Invoker
from .lanes import LaneQueue, Watermark, lane_of
from .policy import FailurePolicy, retry_backoff
from .stats import ShardStats
from .windows import FINAL_CALL_GRACE, WindowState

log = logging.getLogger("streamfn.shard")

Phase = Literal["starting", "reading", "processing", "waiting", "stopped"]


@dataclass(frozen=True, slots=True)
class ShardEnv:
    """Everything a shard runner needs from its pipeline; shared by all shards of it."""

    pipeline: str
    stream: str
    source_kind: str
    source: Source
    invoker: Invoker
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
        stats: ShardStats,
        on_progress: Callable[[Position, bytes | None], Awaitable[None]],
        position: Position | None,
        window: WindowState | None = None,
    ) -> None:
        self.shard_id = shard_id
        self.env = env
        self.stats = stats
        self.phase: Phase = "starting"
        self.idle = False
        self.finished = False
        self.stopping = False
        self._batcher = batcher
        self._on_progress = on_progress
        self._position = position
        self._window = window

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
            unit = await batcher.next()
            self.stats.behind_ms = batcher.behind_ms
            self.stats.filtered = batcher.filtered
            if unit is None:
                window = self._window
                if window is not None and time.time() >= window.end + FINAL_CALL_GRACE:
                    self.phase = "processing"
                    await self._close_window()
                self.idle = True
                continue
            self.phase = "processing"
            self.idle = False
            await self._handle_unit(unit)
            # Yield once per batch: with records always ready and an async handler nothing else
            # would suspend, and other shards, the checkpoint flusher and signals would starve.
            await asyncio.sleep(0)
            if unit.shard_end:
                if self._window is not None:
                    await self._close_window()
                self.finished = True
                return

    async def _handle_unit(self, unit: Unit) -> None:
        stats = self.stats
        if unit.records:
            stats.read += len(unit.records)
            stats.batches += 1
            if self.env.tumbling_window > 0:
                await self._enter_window(unit.records[0])
            await self._process(unit.records, final=unit.window_closed or unit.shard_end)
        through = unit.through
        if through.sequence >= 0 and (self._position is None or through > self._position):
            await self._checkpoint(through)

    async def _enter_window(self, first: Record) -> None:
        """Open the window of ``first``, closing the previous one with a final call if still open."""
        start = self._batcher.window_start(first)
        if self._window is not None and self._window.start != start:
            await self._close_window()
        if self._window is None:
            self._window = WindowState(start=start, size=self.env.tumbling_window)

    async def _close_window(self) -> None:
        """The window's final call, with no records: its records were all handled already."""
        window, env = self._window, self.env
        assert window is not None
        backoff = retry_backoff(env.policy)
        while True:
            context = Context(pipeline=env.pipeline, shard_id=self.shard_id, attempt=0, timeout=env.timeout,
                              state=window.state, window=window.bounds, is_final=True,
                              terminated_early=window.terminated_early)
            try:
                result = await env.invoker.call(Batch(self.shard_id, []), context)
            except HandlerError as exc:
                self._blocked(str(exc), [], 1)
                await self._wait(backoff.next_delay())
                continue
            if result.items and self._position is not None:
                await self._emit_window_items(result.items)
            break
        self._window = None
        self._unblocked(backoff)
        if self._position is not None:
            await self._on_progress(self._position, None)

    async def _emit_window_items(self, items: list[Any]) -> None:
        """A final call's output, keyed by the last record of the window (already checkpointed)."""
        assert self._position is not None
        last = Record(self.shard_id, self._position.sequence, "", b"", self._window.end if self._window else 0.0,
                      self._position.sub_sequence)
        await self._emit([last], items)

    def _context(self, attempts: int, final: bool) -> Context:
        env, window = self.env, self._window
        if window is None:
            return Context(pipeline=env.pipeline, shard_id=self.shard_id, attempt=attempts, timeout=env.timeout)
        return Context(pipeline=env.pipeline, shard_id=self.shard_id, attempt=attempts, timeout=env.timeout,
                       state=window.state, window=window.bounds, is_final=final,
                       terminated_early=window.terminated_early)

    async def _process(self, records: list[Record], *, final: bool = False) -> None:
        """Handle ``records`` to completion: success, or disposal to the destination."""
        env, policy, stats = self.env, self.env.policy, self.stats
        backoff = retry_backoff(policy)
        # Segments still to handle, in shard order, each with the retries it has used.
        todo: deque[tuple[list[Record], int]] = deque([(records, 0)])
        while todo:
            segment, attempts = todo.popleft()
            expired, segment = policy.split_expired(segment)
            if expired:
                await self._dispose(expired, "RecordAgeExceeded", attempts, None, function_error=False)
                if not segment:
                    await self._checkpoint(expired[-1].position)
                    continue
            stats.attempt = attempts
            context = self._context(attempts, final and not todo)
            started = time.perf_counter()
            try:
                result = await env.invoker.call(Batch(self.shard_id, segment), context)
            except HandlerError as exc:
                stats.observe_handler(time.perf_counter() - started)
                retry = self._after_failure(segment, attempts, exc)
                if retry is None:
                    await self._dispose(segment, "RetryAttemptsExhausted", attempts + 1, str(exc))
                    await self._checkpoint(segment[-1].position)
                    continue
                todo.extendleft(reversed(retry))
                if len(retry) == 1:
                    await self._wait(backoff.next_delay())
                continue
            stats.observe_handler(time.perf_counter() - started)
            if result.failed_at is None:
                await self._emit(segment, result.items)
                stats.handled += len(segment)
                if self._window is not None:
                    if context.is_final:
                        self._window = None
                    else:
                        self._window.keep(result.state)
                await self._checkpoint(segment[-1].position)
                self._unblocked(backoff)
                continue
            done = [r for r in segment if r.position < result.failed_at]
            rest = segment[len(done) :]
            if done:
                await self._emit(done, result.items)
                stats.handled += len(done)
                await self._checkpoint(done[-1].position)
            attempts += 1
            self._blocked(f"partial batch failure at {rest[0].identifier}", rest, attempts)
            if policy.attempts_exhausted(attempts):
                await self._dispose(rest, "RetryAttemptsExhausted", attempts, "partial batch failure",
                                    function_error=False)
                await self._checkpoint(rest[-1].position)
                continue
            todo.appendleft((rest, attempts))
            await self._wait(backoff.next_delay())

    def _after_failure(
        self, segment: list[Record], attempts: int, exc: HandlerError
    ) -> list[tuple[list[Record], int]] | None:
        """What to try next after a failed call: the halves, the same again, or None (give up)."""
        policy = self.env.policy
        if policy.bisect_on_error and len(segment) > 1:
            middle = len(segment) // 2
            self._blocked(str(exc), segment, attempts, bisected=True)
            return [(segment[:middle], attempts), (segment[middle:], attempts)]
        attempts += 1
        self._blocked(str(exc), segment, attempts)
        if policy.attempts_exhausted(attempts):
            return None
        return [(segment, attempts)]

    def _blocked(self, error: str, segment: list[Record], attempts: int, *, bisected: bool = False) -> None:
        stats = self.stats
        stats.failed += len(segment)
        stats.retries += 1
        stats.attempt = attempts
        stats.last_error = error
        if stats.blocked_since is None:
            stats.blocked_since = time.monotonic()
        log.warning(
            "batch failed; %s", "bisecting" if bisected else "will retry",
            extra={
                "pipeline": self.env.pipeline, "shard": self.shard_id,
                "first_sequence": segment[0].identifier, "last_sequence": segment[-1].identifier,
                "records": len(segment), "attempt": attempts, "error": error,
            },
        )

    def _unblocked(self, backoff: Backoff) -> None:
        backoff.reset()
        self.stats.blocked_since = None
        self.stats.attempt = 0

    async def _emit(self, records: list[Record], items: list[Any]) -> None:
        """Write the call's output to every sink; return once all acknowledged it durably."""
        env = self.env
        if not items or not env.sinks:
            return
        first, last = records[0].position, records[-1].position
        if env.keyed_sinks:
            await self._persist(lambda: env.store.record_pending(self.shard_id, first, last), "checkpoint store")
        batch = SinkBatch(
            pipeline=env.pipeline, stream=env.stream, shard_id=self.shard_id,
            first=first, last=last, first_arrival=records[0].arrival_time, items=items,
        )
        started = time.perf_counter()
        for sink in env.sinks:
            await self._persist(lambda sink=sink: sink.write(batch), type(sink).__name__)  # type: ignore[misc]
        self.stats.sink_seconds += time.perf_counter() - started

    async def _dispose(
        self, records: list[Record], condition: Condition, invoke_count: int, error: str | None,
        *, function_error: bool = True,
    ) -> None:
        env = self.env
        if env.destination is None:  # the pipeline refuses limits without a destination
            raise RuntimeError("a failure limit was hit but no on-failure destination is configured")
        failure = FailedBatch(
            pipeline=env.pipeline, stream=env.stream, source_kind=env.source_kind, shard_id=self.shard_id,
            condition=condition, records=records, invoke_count=invoke_count, error=error,
            function_error=function_error, failed_at=time.time(),
        )
        destination = env.destination
        await self._persist(lambda: destination.send(failure), "on-failure destination")
        self.stats.sent_to_destination += len(records)
        log.error(
            "records sent to the on-failure destination",
            extra={"pipeline": env.pipeline, "shard": self.shard_id, "condition": condition,
                   "first_sequence": records[0].identifier, "last_sequence": records[-1].identifier,
                   "records": len(records), "error": error},
        )

    async def _persist(self, write: Callable[[], Awaitable[None]], what: str) -> None:
        """Retry a write to a store until it succeeds: the shard waits, nothing is skipped."""
        policy = self.env.policy
        backoff = retry_backoff(policy)
        while True:
            try:
                await write()
                return
            except LeaseLostError:
                raise
            except Exception as exc:
                delay = backoff.next_delay()
                log.warning(
                    "write to %s failed; retrying in %.2fs", what, delay,
                    extra={"pipeline": self.env.pipeline, "shard": self.shard_id, "error": repr(exc)},
                )
                await self._wait(delay)

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

    async def _checkpoint(self, position: Position) -> None:
        self._position = position
        await self._on_progress(position, windows.dump(self._window))


def _before(position: Position) -> Position:
    """The position just before ``position``, for reading again from it."""
    if position.sub_sequence:
        return Position(position.sequence, position.sub_sequence - 1)
    return Position(position.sequence - 1)


def _show(position: Position | None) -> str | None:
    if position is None:
        return None
    return f"{position.sequence}:{position.sub_sequence}" if position.sub_sequence else str(position.sequence)


class ShardRunner:
    """Processes one shard until stopped or until the shard ends, over one lane or several."""

    def __init__(self, shard: ShardInfo, env: ShardEnv) -> None:
        self.shard = shard
        self.env = env
        self.stats = ShardStats(shard.shard_id)
        self.finished = False
        self.stopping = False
        self._workers: list[LaneWorker] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._dispatcher: asyncio.Task[None] | None = None
        self._dispatcher_idle = True
        self._watermark: Watermark | None = None
        self._done_through: Position | None = None

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

    async def run(self) -> None:
        env = self.env
        checkpoint = await env.store.load(self.shard_id)
        if checkpoint is not None and checkpoint.shard_end:
            self.finished = True
            return
        position = checkpoint.position if checkpoint else None
        self.stats.checkpoint = _show(position)
        # Batches whose output may exist past the checkpoint. With lanes one may start below it
        # (its lane finished it while another lane lagged): reading then restarts at its first record.
        pending = sorted(
            b for b in (checkpoint.pending if checkpoint else ()) if position is None or b[1] > position
        )
        read_after = position
        if pending and position is not None and pending[0][0] <= position:
            read_after = _before(pending[0][0])
        start = self._starting_position()
        reader = env.source.reader(self.shard, read_after, start)
        if position is None and start.kind != "trim_horizon":
            await self._pin_start(reader)
        try:
            if env.lanes == 1:
                batcher = Batcher(reader, env.limits, accept=env.accept, replay=deque(pending),
                                  tumbling_window=env.tumbling_window)
                window = windows.load(checkpoint.window_state if checkpoint else None, env.tumbling_window)
                self._workers = [LaneWorker(self.shard_id, env, batcher, self.stats, self._save, position, window)]
            else:
                self._start_lanes(reader, position, pending)
                self._done_through = position
            await self._run_workers()
            if all(w.finished for w in self._workers) and not self.stopping:
                final = self._watermark.position if self._watermark else self._workers[0]._position
                await env.store.save(self.shard_id, Checkpoint(position=final, shard_end=True))
                self.stats.checkpoint = "SHARD_END"
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
        after = getattr(reader, "after_seq", None)
        if isinstance(after, int):
            await self._save(Position(after))

    def _starting_position(self) -> StartingPosition:
        """Where a shard without checkpoint starts: a store's reset (``checkpoints reset``) first,
        then trim horizon for a child shard (its parents are done, nothing of it was read), then
        the pipeline's starting position."""
        override = getattr(self.env.store, "starting_position", None)
        position = override(self.shard_id) if override is not None else None
        if position is not None:
            return position  # type: ignore[no-any-return]
        if self.shard.parent_ids:
            return StartingPosition("trim_horizon")
        return self.env.starting

    def _start_lanes(
        self, reader: ShardReader, position: Position | None, pending: list[tuple[Position, Position]]
    ) -> None:
        env = self.env
        capacity = max(env.limits.max_records * 2, 100)
        queues = [LaneQueue(capacity) for _ in range(env.lanes)]
        replays: list[deque[tuple[Position, Position]]] = [deque() for _ in range(env.lanes)]
        self._watermark = Watermark(env.lanes, position)
        for lane, queue in enumerate(queues):
            batcher = Batcher(queue, env.limits, accept=env.accept, replay=replays[lane])
            progress = functools.partial(self._lane_progress, lane)
            self._workers.append(LaneWorker(self.shard_id, env, batcher, self.stats, progress, position))
        self._dispatcher = asyncio.create_task(
            self._dispatch(reader, queues, replays, deque(pending)), name=f"dispatch:{self.shard_id}"
        )

    async def _dispatch(
        self,
        reader: ShardReader,
        queues: list[LaneQueue],
        replays: list[deque[tuple[Position, Position]]],
        pending: deque[tuple[Position, Position]],
    ) -> None:
        """Read the shard and route each record to its key's lane, in shard order."""
        lanes, watermark, done_through = len(queues), self._watermark, self._done_through
        assert watermark is not None
        replaying: dict[int, tuple[Position, Position]] = {}
        while True:
            result = await reader.read(self.env.limits.max_records, IDLE_WAIT)
            self._dispatcher_idle = not result.records
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

    async def _save(self, position: Position, window_state: bytes | None = None) -> None:
        self.stats.checkpoint = _show(position)
        await self.env.store.save(self.shard_id, Checkpoint(position=position, window_state=window_state))

    async def _lane_progress(self, lane: int, position: Position, window_state: bytes | None = None) -> None:
        assert self._watermark is not None
        moved = self._watermark.lane_done(lane, position)
        if moved is not None:
            await self._save(moved)
