"""Exactly-once output through crashes, for every combination of failure controls.

The real shard loop (ShardRunner, Batcher, lanes, windows, failure policy, Invoker) runs over
in-memory parts whose durable state survives a "crash": the runner's task is cancelled at a random
step, everything in memory is dropped, and a fresh runner resumes from the durable checkpoint and
pending bounds, as a restarted process would. Hypothesis draws the failure pattern (flaky and
poison records, partial failures), the controls and the crash points; after the last run the
sinks and the on-failure destination must account for every record exactly once.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from typing import Any, ClassVar

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from streamfn import Batch, Context, Position, Record, Result
from streamfn.connectors.shared.keys import DEFAULT_TEMPLATE, render_key
from streamfn.engine.batching import BatchLimits
from streamfn.engine.invoke import Invoker
from streamfn.engine.policy import FailurePolicy
from streamfn.engine.shard import ShardEnv, ShardRunner
from streamfn.protocols.checkpoint import Checkpoint, CheckpointStore, advance, with_pending
from streamfn.protocols.destination import FailedBatch
from streamfn.protocols.sink import SinkBatch
from streamfn.protocols.source import ReadResult, ShardInfo, ShardReader, Source, SourceTraits, StartingPosition

SHARD = ShardInfo("shard-0")


class MemoryReader(ShardReader):
    def __init__(self, records: list[Record], after: Position | None, start: StartingPosition) -> None:
        at = start.position if start.kind == "at_sequence" else None  # type: ignore[attr-defined]
        if at is not None:
            self._records = [r for r in records if r.position >= at]
        else:
            self._records = [r for r in records if after is None or r.position > after]

    async def read(self, max_records: int, wait: float) -> ReadResult:
        await asyncio.sleep(0)
        taken, self._records = self._records[:max_records], self._records[max_records:]
        return ReadResult(taken, shard_end=not self._records)

    async def close(self) -> None:
        return None


class MemorySource(Source):
    traits = SourceTraits(kind="memory")

    name = "s"

    def __init__(self, records: list[Record]) -> None:
        self.records = records

    def reader(self, shard: ShardInfo, after: Position | None, start: StartingPosition) -> MemoryReader:
        return MemoryReader(self.records, after, start)


class MemoryStore(CheckpointStore):
    """Every call is durable when it returns: what a crash keeps is exactly what was saved."""

    def __init__(self) -> None:
        self.saved: dict[str, Checkpoint] = {}

    async def load(self, shard_id: str) -> Checkpoint | None:
        return self.saved.get(shard_id)

    async def save(self, shard_id: str, checkpoint: Checkpoint) -> None:
        await asyncio.sleep(0)
        self.saved[shard_id] = advance(self.saved.get(shard_id), checkpoint)

    async def record_pending(self, shard_id: str, first: Position, last: Position) -> None:
        await asyncio.sleep(0)
        recorded = with_pending(self.saved.get(shard_id), first, last)
        if recorded is not None:
            self.saved[shard_id] = recorded
        await asyncio.sleep(0)

    async def flush(self) -> None:
        return None


class MemorySink:
    keyed_by_batch: ClassVar[bool] = True

    def __init__(self) -> None:
        self.objects: dict[str, list[Any]] = {}

    async def write(self, batch: SinkBatch) -> None:
        await asyncio.sleep(0)
        self.objects[render_key(DEFAULT_TEMPLATE, batch)] = list(batch.items)
        await asyncio.sleep(0)


class MemoryDestination:
    def __init__(self) -> None:
        self.failures: list[FailedBatch] = []

    async def send(self, failure: FailedBatch) -> None:
        await asyncio.sleep(0)
        self.failures.append(failure)


class Handler:
    """Fails ``poison`` records always and ``flaky`` ones on the calls numbered (1-based, counted
    across crashes) in ``flaky[seq]``; handles records in order."""

    def __init__(self, poison: set[int], flaky: dict[int, set[int]], partial: bool) -> None:
        self.poison, self.flaky, self.partial = poison, flaky, partial
        self.calls: Counter[int] = Counter()

    async def __call__(self, batch: Batch, context: Context) -> Result:
        await asyncio.sleep(0)
        failing = None
        for record in batch:
            self.calls[record.sequence] += 1
            if failing is None and (record.sequence in self.poison
                                    or self.calls[record.sequence] in self.flaky.get(record.sequence, ())):
                failing = record
        handled = [r for r in batch if failing is None or r.position < failing.position]
        if failing is not None and not self.partial:
            raise RuntimeError(f"record {failing.sequence} failed")
        count = (context.state or 0) + len(handled)
        items: list[Any] = [{"seq": r.sequence} for r in handled]
        if context.is_final and failing is None:
            items.append({"window": context.window_start, "count": count})
        return Result(items=items, failed=[failing.sequence] if failing is not None else [], state=count)


controls = st.fixed_dictionaries({
    "n": st.integers(1, 60),
    "poison": st.sets(st.integers(1, 60), max_size=2),
    "flaky": st.dictionaries(st.integers(1, 60), st.sets(st.integers(1, 3), min_size=1, max_size=2), max_size=6),
    "partial": st.booleans(),
    "bisect": st.booleans(),
    "max_attempts": st.sampled_from([-1, 0, 2]),
    "lanes": st.sampled_from([1, 2, 4]),
    "window": st.sampled_from([0, 1, 3]),
    "max_records": st.integers(1, 9),
    "crashes": st.lists(st.integers(1, 120), max_size=5),
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(controls)
# Lanes forming recorded batches again after crashes, their batchers reading ahead of the batch size.
@example({"window": 0, "max_attempts": 2, "n": 34, "lanes": 2, "max_records": 3, "bisect": True,
          "poison": {16, 45}, "crashes": [118, 28, 6, 100, 79],
          "flaky": {10: {1, 2}, 40: {2}, 57: {3}, 42: {2}, 30: {1, 2}, 22: {3}}, "partial": True})
def test_every_record_is_output_once_through_crashes(c: dict[str, Any]) -> None:
    if c["window"]:
        c["lanes"] = 1  # the config refuses windows with lanes
    if c["max_attempts"] < 0:
        c["poison"] = set()  # retrying forever on a poison record never ends: nothing to check there
    asyncio.run(_run(c))


async def _run(c: dict[str, Any]) -> None:
    n, window = c["n"], c["window"]
    # With windows of `window` seconds, `window` consecutive records share one: windows of 1 or 3 records.
    records = [Record(SHARD.shard_id, seq, f"k{seq % 5}", b"{}", float((seq - 1) // window * window if window else 0))
               for seq in range(1, n + 1)]
    handler = Handler(c["poison"], c["flaky"], c["partial"])
    store, sink, destination = MemoryStore(), MemorySink(), MemoryDestination()
    env = ShardEnv(
        pipeline="p", stream="s", source_kind="kinesis", source=MemorySource(records),  # type: ignore[arg-type]
        invoker=Invoker(handler, interface="native", timeout=5.0, report_failures=c["partial"],
                        lambda_event=lambda b: {}, windowed=bool(window)),
        sinks=[sink], store=store, destination=destination,  # type: ignore[list-item,arg-type]
        limits=BatchLimits(max_records=c["max_records"]),
        policy=FailurePolicy(initial_delay=0.0001, max_delay=0.0002, max_attempts=c["max_attempts"],
                             bisect_on_error=c["bisect"]),
        starting=StartingPosition(), timeout=5.0, lanes=c["lanes"], tumbling_window=float(window),
    )
    for steps in c["crashes"]:
        task = asyncio.create_task(ShardRunner(SHARD, env).run())
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()  # the crash: nothing in memory survives, the store, sink and destination do
        await asyncio.gather(task, return_exceptions=True)
    runner = ShardRunner(SHARD, env)
    async with asyncio.timeout(20):
        await runner.run()
    assert runner.finished

    output: Counter[int] = Counter()
    for key, items in sink.objects.items():
        sequences = [item["seq"] for item in items if "seq" in item]
        assert sequences == sorted(sequences), f"object {key} out of shard order: {sequences}"
        output.update(sequences)
    disposed = Counter(r.sequence for failure in destination.failures for r in failure.records)
    doubled = {seq: count for seq, count in output.items() if count > 1}
    assert not doubled, f"records output more than once: {doubled}"
    lost = [seq for seq in range(1, n + 1) if not output[seq] and not disposed[seq]]
    assert not lost, f"records neither output nor disposed of: {lost}"
    assert not (set(output) & c["poison"]), "a record that always fails was output"
    if window:
        totals: dict[float, list[int]] = defaultdict(list)
        for items in sink.objects.values():
            for item in items:
                if "window" in item:
                    totals[item["window"]].append(item["count"])
        # A record disposed of before a crash may be handled after it: windows count what was output.
        sizes = Counter(r.arrival_time for r in records if output[r.sequence])
        for start, size in sizes.items():
            assert totals.get(start) == [size], f"window {start}: final outputs {totals.get(start)}, {size} records"
    checkpoint = store.saved[SHARD.shard_id]
    assert checkpoint.shard_end and checkpoint.pending == ()
