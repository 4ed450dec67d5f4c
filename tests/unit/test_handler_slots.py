"""Handler isolation: a stuck call holds only its own slot, a slot's calls never overlap, anything a
handler raises (SystemExit included) is a handler error, and only running calls are counted."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfn import Batch, Context, Record
from streamfn.engine.handler_threads import HandlerThreads, running_calls
from streamfn.engine.invoke import HandlerSlot, Invoker
from streamfn.errors import HandlerError


def batch(shard: str = "s", seq: int = 1) -> Batch:
    return Batch(shard, [Record(shard, seq, "k", b"{}", 0.0)])


def context() -> Context:
    return Context(pipeline="p", shard_id="s", attempt=0, timeout=5.0)


def invoker(handler: Any, *, timeout: float = 5.0, threads: HandlerThreads | None = None) -> Invoker:
    return Invoker(handler, interface="native", timeout=timeout, report_failures=False,
                   lambda_event=lambda b: {}, threads=threads or HandlerThreads("test-handler"))


@pytest.fixture
def hang() -> Iterator[threading.Event]:
    """Plain-function handlers wait on this; set at the end so no thread outlives its test."""
    event = threading.Event()
    yield event
    event.set()


class Entries:
    """Counts how many calls are inside the handler at once, and records each call's span."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.inside = 0
        self.most = 0
        self.spans: list[tuple[float, float]] = []

    def enter(self) -> float:
        with self._lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
        return time.monotonic()

    def leave(self, started: float) -> None:
        with self._lock:
            self.inside -= 1
            self.spans.append((started, time.monotonic()))


async def eventually(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not {what} after {within}s")
        await asyncio.sleep(0.01)


async def _drain(*slots: HandlerSlot) -> None:
    async with asyncio.timeout(10):
        await asyncio.gather(*(slot.wait_idle() for slot in slots))


# -- a stuck plain function blocks only its own slot -------------------------------------------------
async def test_forty_stuck_plain_calls_leave_every_other_slot_a_thread(hang: threading.Event) -> None:
    def handler(b: Batch, ctx: Context) -> list[str]:
        if b.shard_id.startswith("stuck"):
            hang.wait()
        return [b.shard_id]

    threads = HandlerThreads("test-stuck")
    calls = invoker(handler, timeout=0.2, threads=threads)
    stuck = [calls.slot() for _ in range(40)]
    outcomes = await asyncio.gather(*(s.call(batch(f"stuck-{i}"), context()) for i, s in enumerate(stuck)),
                                    return_exceptions=True)
    assert all(isinstance(o, HandlerError) and "timed out after 0.2s" in str(o) for o in outcomes)
    assert all(slot.busy for slot in stuck)
    assert threads.thread_count() == 40  # more than the old fixed pool of 32, all held

    healthy = [calls.slot() for _ in range(10)]
    async with asyncio.timeout(5):
        results = await asyncio.gather(*(s.call(batch(f"ok-{i}"), context()) for i, s in enumerate(healthy)))
    assert [r.items for r in results] == [[f"ok-{i}"] for i in range(10)]
    assert 41 <= threads.thread_count() <= 50  # one per call in flight, idle ones reused
    assert not any(slot.busy for slot in healthy)

    hang.set()
    await _drain(*stuck)
    assert not any(slot.busy for slot in stuck)
    threads.shutdown()


async def test_a_retry_waits_for_the_timed_out_plain_call_it_replaces(hang: threading.Event) -> None:
    entries = Entries()

    def handler(b: Batch, ctx: Context) -> list[int]:
        started = entries.enter()
        try:
            if ctx.attempt == 0:
                hang.wait()
            return [ctx.attempt]
        finally:
            entries.leave(started)

    slot = invoker(handler, timeout=0.1).slot()
    with pytest.raises(HandlerError, match="timed out"):
        await slot.call(batch(), context())
    assert slot.busy
    retry = asyncio.create_task(slot.call(batch(), Context(pipeline="p", shard_id="s", attempt=1, timeout=0.1)))
    await asyncio.sleep(0.3)
    assert not retry.done() and entries.most == 1  # the retry has not entered the handler
    hang.set()
    async with asyncio.timeout(5):
        result = await retry
    assert result.items == [1]
    assert entries.most == 1
    (first, second) = sorted(entries.spans)
    assert second[0] >= first[1]


@settings(max_examples=25, deadline=None)
@given(durations=st.lists(st.sampled_from([0.0, 0.004, 0.012, 0.03]), min_size=1, max_size=6),
       is_async=st.booleans())
def test_calls_of_one_slot_never_overlap(durations: list[float], is_async: bool) -> None:
    """Whatever mix of fast calls and calls past the 10 ms timeout, a slot runs one call at a time
    and each call starts the handler exactly once."""
    entries = Entries()

    def plain(b: Batch, ctx: Context) -> list[int]:
        started = entries.enter()
        try:
            time.sleep(durations[ctx.attempt])
            return [ctx.attempt]
        finally:
            entries.leave(started)

    async def coroutine(b: Batch, ctx: Context) -> list[int]:
        started = entries.enter()
        try:
            await asyncio.sleep(durations[ctx.attempt])
            return [ctx.attempt]
        finally:
            entries.leave(started)

    async def scenario() -> None:
        slot = invoker(coroutine if is_async else plain, timeout=0.01).slot()
        for attempt in range(len(durations)):
            try:
                result = await slot.call(batch(), Context(pipeline="p", shard_id="s", attempt=attempt, timeout=0.01))
            except HandlerError as exc:
                assert "timed out" in str(exc)
            else:
                assert result.items == [attempt]
        await _drain(slot)

    asyncio.run(scenario())
    assert entries.most == 1
    assert len(entries.spans) == len(durations)
    spans = sorted(entries.spans)
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(spans))


# -- async handlers: cancelled on timeout; one that ignores it keeps its slot busy ------------------
async def test_a_timed_out_async_call_is_cancelled() -> None:
    cancelled = asyncio.Event()

    async def handler(b: Batch, ctx: Context) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    slot = invoker(handler, timeout=0.05).slot()
    with pytest.raises(HandlerError, match=r"timed out after 0\.05s"):
        await slot.call(batch(), context())
    async with asyncio.timeout(2):
        await cancelled.wait()
        await slot.wait_idle()
    assert not slot.busy


async def test_a_slots_one_timer_spares_calls_that_end_in_time_and_times_out_the_one_that_hangs() -> None:
    """One timer serves all of a slot's async calls: calls that end in time over several timeout
    periods are never cancelled, and a later call that hangs still times out, its lane's task
    left uncancelled for the next call."""
    hanging = asyncio.Event()

    async def handler(records: Batch, ctx: Context) -> list[int]:
        if records[0].sequence == 0:
            await hanging.wait()
        else:
            await asyncio.sleep(0.01)
        return [records[0].sequence]

    timeout = 0.5  # long next to a loop turn: no stall of a loaded machine passes for a timeout
    slot = invoker(handler, timeout=timeout).slot()
    loop = asyncio.get_running_loop()
    first = loop.time()
    seq = 1
    while loop.time() - first < 2.5 * timeout:
        assert (await slot.call(batch(seq=seq), context())).items == [seq]
        seq += 1
    started = loop.time()
    with pytest.raises(HandlerError, match="timed out"):
        await slot.call(batch(seq=0), context())
    assert loop.time() - started >= timeout - 0.002
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    assert (await slot.call(batch(seq=seq), context())).items == [seq]


async def test_an_async_call_that_ignores_its_cancellation_holds_its_lane_until_it_ends() -> None:
    entries = Entries()
    finish = asyncio.Event()

    async def handler(b: Batch, ctx: Context) -> list[int]:
        started = entries.enter()
        try:
            if ctx.attempt == 0:
                while not finish.is_set():
                    with contextlib.suppress(asyncio.CancelledError):  # a handler that swallows it
                        await finish.wait()
            return [ctx.attempt]
        finally:
            entries.leave(started)

    slot = invoker(handler, timeout=0.05).slot()
    first = asyncio.create_task(slot.call(batch(), context()))
    await asyncio.sleep(0.2)
    assert not first.done(), "the lane stays in the call: its retry cannot start beside it"
    finish.set()
    with pytest.raises(HandlerError, match="timed out"):  # it answered, but past its timeout
        await first
    assert (await slot.call(batch(), Context(pipeline="p", shard_id="s", attempt=1, timeout=0.05))).items == [1]
    assert entries.most == 1 and len(entries.spans) == 2


async def test_the_callers_cancellation_passes_through_and_cancels_an_async_call() -> None:
    cancelled = asyncio.Event()

    async def handler(b: Batch, ctx: Context) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    slot = invoker(handler).slot()
    caller = asyncio.create_task(slot.call(batch(), context()))
    await asyncio.sleep(0.05)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    async with asyncio.timeout(2):
        await cancelled.wait()
        await slot.wait_idle()


# -- anything a handler raises is a handler error ---------------------------------------------------
class Custom(BaseException):
    pass


RAISED = [SystemExit(3), KeyboardInterrupt(), BaseException("base"), Custom("custom"), asyncio.CancelledError()]


@pytest.mark.parametrize("is_async", [False, True], ids=["plain", "async"])
@pytest.mark.parametrize("error", RAISED, ids=lambda e: type(e).__name__)
async def test_base_exceptions_from_a_handler_are_handler_errors_and_the_slot_goes_on(
    error: BaseException, is_async: bool
) -> None:
    def plain(b: Batch, ctx: Context) -> list[int]:
        if ctx.attempt == 0:
            raise error
        return [ctx.attempt]

    async def coroutine(b: Batch, ctx: Context) -> list[int]:
        return plain(b, ctx)

    slot = invoker(coroutine if is_async else plain).slot()
    with pytest.raises(HandlerError, match=f"handler raised {type(error).__name__}") as raised:
        await slot.call(batch(), context())
    assert raised.value.__cause__ is error
    retried = await slot.call(batch(), Context(pipeline="p", shard_id="s", attempt=1, timeout=5.0))
    assert retried.items == [1]


# -- what is counted at exit -------------------------------------------------------------------------
async def _no_running_calls() -> int:
    await eventually(lambda: running_calls() == 0, 10, "drained")  # an earlier test's timed-out call may be ending
    return running_calls()


async def test_running_calls_counts_only_calls_still_running(hang: threading.Event) -> None:
    assert await _no_running_calls() == 0
    threads = HandlerThreads("test-count")
    quick = invoker(lambda b, ctx: [1], threads=threads).slot()
    for _ in range(20):
        await quick.call(batch(), context())
        assert running_calls() == 0  # a finished call stops counting before its caller sees it
    assert threads.thread_count() == 1  # the idle thread is reused, and not counted

    stuck = invoker(lambda b, ctx: hang.wait(), timeout=0.05, threads=threads).slot()
    with pytest.raises(HandlerError, match="timed out"):
        await stuck.call(batch(), context())
    assert running_calls() == 1
    hang.set()
    await _drain(stuck)
    assert running_calls() == 0
    threads.shutdown()


async def test_idle_threads_end_and_a_shut_down_pool_takes_no_call() -> None:
    threads = HandlerThreads("test-idle", idle_timeout=0.05)
    slot = invoker(lambda b, ctx: [1], threads=threads).slot()
    await slot.call(batch(), context())
    await eventually(lambda: threads.thread_count() == 0, 5, "ended by idleness")
    assert (await slot.call(batch(), context())).items == [1]  # a new thread when none is left
    threads.shutdown()
    await eventually(lambda: threads.thread_count() == 0, 5, "ended by shutdown")
    with pytest.raises(RuntimeError, match="shut down"):
        await slot.call(batch(), context())
