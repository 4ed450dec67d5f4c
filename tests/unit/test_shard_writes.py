"""Failures outside the handler: a failing sink, store or destination blocks the shard visibly and
retries; output a sink refuses goes through the batch's failure policy like a handler error."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from decimal import Decimal
from typing import Any

import pytest

from streamfn import Batch, Context, Position, Record
from streamfn.engine.batching import BatchLimits
from streamfn.engine.invoke import Invoker
from streamfn.engine.policy import FailurePolicy
from streamfn.engine.shard import ShardEnv, ShardRunner
from streamfn.errors import RetryableError, SinkError
from streamfn.protocols.sink import SinkBatch
from streamfn.protocols.source import StartingPosition
from tests.unit.test_shard_exactly_once import SHARD, MemoryDestination, MemorySink, MemorySource, MemoryStore


def shard_env(handler: Any, sink: Any, *, store: Any = None, destination: Any = None, n: int = 20,
              policy: FailurePolicy | None = None, max_records: int = 5) -> ShardEnv:
    records = [Record(SHARD.shard_id, seq, "k", b"{}", time.time()) for seq in range(1, n + 1)]
    return ShardEnv(
        pipeline="p", stream="s", source_kind="kinesis", source=MemorySource(records),  # type: ignore[arg-type]
        invoker=Invoker(handler, interface="native", timeout=5.0, report_failures=False, lambda_event=lambda b: {}),
        sinks=[sink], store=store or MemoryStore(), destination=destination,
        limits=BatchLimits(max_records=max_records),
        policy=policy or FailurePolicy(initial_delay=0.01, max_delay=0.02), starting=StartingPosition(), timeout=5.0,
    )


async def echo(batch: Batch, context: Context) -> list[Any]:
    return [{"seq": r.sequence} for r in batch]


class FlakySink(MemorySink):
    """Refuses the first ``failures`` writes with a retryable error, as an unreachable endpoint would."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def write(self, batch: SinkBatch) -> None:
        if self.failures:
            self.failures -= 1
            raise RetryableError("connection refused", kind="connection")
        await super().write(batch)


async def test_a_failing_sink_blocks_the_shard_visibly_then_recovers() -> None:
    sink = FlakySink(failures=6)
    runner = ShardRunner(SHARD, shard_env(echo, sink))
    task = asyncio.create_task(runner.run())
    seen_blocked = False
    while not task.done():
        await asyncio.sleep(0.002)
        if runner.stats.is_blocked(stalled_after=60):
            seen_blocked = True
            assert runner.stats.blocked_cause == "sink"
            assert runner.stats.blocked_for() > 0
            assert "connection refused" in (runner.stats.last_error or "")
    await task
    assert seen_blocked
    assert runner.stats.write_errors == {("sink", "connection"): 6}
    assert runner.stats.retries >= 6
    assert not runner.stats.is_blocked(stalled_after=60) and runner.stats.blocked_for() == 0
    assert sorted(i["seq"] for items in sink.objects.values() for i in items) == list(range(1, 21))


class HungSink(MemorySink):
    """The first write never answers until released: a hung endpoint before any failure."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def write(self, batch: SinkBatch) -> None:
        await self.release.wait()
        await super().write(batch)


async def test_a_write_in_flight_counts_as_blocked_before_it_fails() -> None:
    sink = HungSink()
    runner = ShardRunner(SHARD, shard_env(echo, sink))
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0.3)
    assert runner.stats.blocked_for() >= 0.25, "a hung write blocks the shard"
    assert runner.stats.is_blocked(stalled_after=0.2)
    assert not runner.stats.is_blocked(stalled_after=30), "not yet past the threshold"
    sink.release.set()
    await task
    assert runner.stats.blocked_for() == 0


class FailingStore(MemoryStore):
    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def record_pending(self, shard_id: str, first: Position, last: Position) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        await super().record_pending(shard_id, first, last)


async def test_no_sink_write_without_its_pending_record() -> None:
    store, sink = FailingStore(failures=3), MemorySink()
    writes_before_pending: list[str] = []
    original = sink.write

    async def guarded(batch: SinkBatch) -> None:
        if (batch.first, batch.last) not in store.saved[SHARD.shard_id].pending and (
                store.saved[SHARD.shard_id].position is None or store.saved[SHARD.shard_id].position < batch.last):
            writes_before_pending.append(f"{batch.first}-{batch.last}")
        await original(batch)

    sink.write = guarded  # type: ignore[method-assign]
    runner = ShardRunner(SHARD, shard_env(echo, sink, store=store))
    await runner.run()
    assert not writes_before_pending
    assert runner.stats.write_errors == {("checkpoint store", "storage"): 3}
    assert sorted(i["seq"] for items in sink.objects.values() for i in items) == list(range(1, 21))


class EncodingSink(MemorySink):
    """Refuses output it cannot encode, as a JSON sink refuses a Decimal."""

    async def write(self, batch: SinkBatch) -> None:
        if any(isinstance(value, Decimal) for item in batch.items for value in item.values()):
            raise SinkError("Decimal is not JSON serializable")
        await super().write(batch)


async def decimal_for_seven(batch: Batch, context: Context) -> list[Any]:
    return [{"seq": r.sequence, "v": Decimal(1) if r.sequence == 7 else 1} for r in batch]


async def test_output_a_sink_refuses_goes_through_the_failure_policy() -> None:
    sink, destination = EncodingSink(), MemoryDestination()
    policy = FailurePolicy(initial_delay=0.01, max_delay=0.02, max_attempts=1, bisect_on_error=True)
    runner = ShardRunner(SHARD, shard_env(decimal_for_seven, sink, destination=destination, policy=policy))
    async with asyncio.timeout(10):
        await runner.run()
    assert runner.finished
    disposed = [r.sequence for failure in destination.failures for r in failure.records]
    assert disposed == [7], "bisecting isolated the record whose output the sink refused"
    assert "sink refused the output" in (destination.failures[0].error or "")
    output = sorted(i["seq"] for items in sink.objects.values() for i in items)
    assert output == [seq for seq in range(1, 21) if seq != 7]
    assert runner.stats.write_errors[("sink", "rejected")] >= 1


class TrimmedSource(MemorySource):
    """The first read reports records that retention removed before they could be read."""

    def reader(self, shard: Any, after: Any, start: Any) -> Any:
        reader = super().reader(shard, after, start)
        plain_read = reader.read
        reported = False

        async def read(max_records: int, wait: float) -> Any:
            nonlocal reported
            result = await plain_read(max_records, wait)
            if not reported:
                reported, result.trimmed = True, 7
            return result

        reader.read = read  # type: ignore[method-assign]
        return reader


@pytest.mark.parametrize("lanes", [1, 3])
async def test_records_trimmed_before_they_were_read_are_counted_once(lanes: int) -> None:
    env = shard_env(echo, MemorySink())
    records = env.source.records  # type: ignore[attr-defined]
    env = dataclasses.replace(env, source=TrimmedSource(records), lanes=lanes)
    runner = ShardRunner(SHARD, env)
    await runner.run()
    assert runner.stats.trimmed == 7


async def test_an_async_call_past_its_timeout_shows_its_shard_blocked() -> None:
    release = asyncio.Event()

    async def swallows_its_cancellation(batch: Batch, context: Context) -> list[Any]:
        while not release.is_set() and context.attempt == 0:
            with contextlib.suppress(asyncio.CancelledError):  # a handler bug: the lane must hold, and say so
                await release.wait()
        return [{"seq": r.sequence} for r in batch]

    env = dataclasses.replace(shard_env(swallows_its_cancellation, MemorySink(), n=3), timeout=0.05,
                              invoker=Invoker(swallows_its_cancellation, interface="native", timeout=0.05,
                                                   report_failures=False, lambda_event=lambda b: {}))
    runner = ShardRunner(SHARD, env)
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0.3)
    assert runner.stats.is_blocked(stalled_after=60) and runner.stats.blocked_for() >= 0.2
    release.set()
    async with asyncio.timeout(5):
        await task
    assert runner.finished and not runner.stats.is_blocked(stalled_after=60)
