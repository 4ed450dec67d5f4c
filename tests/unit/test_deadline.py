"""A lane's Watchdog keeps asyncio.timeout's rules with one timer for many calls: a call past its
delay is cancelled and reported as timed out, its task left uncancelled; a cancellation from
outside passes through; a call that ends in time is untouched, however many came before it."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from streamfn.engine.deadline import Watchdog


def current() -> asyncio.Task[object]:
    task = asyncio.current_task()
    assert task is not None
    return task


async def test_a_call_past_its_delay_is_cancelled_and_the_task_goes_on() -> None:
    watchdog = Watchdog(0.01)
    task = current()
    watchdog.start(task)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(10)
    assert watchdog.stop()
    assert task.cancelling() == 0
    await asyncio.sleep(0)  # no cancellation left pending for the next await


async def test_a_call_that_ends_in_time_is_untouched() -> None:
    watchdog = Watchdog(10)
    watchdog.start(current())
    await asyncio.sleep(0)
    assert not watchdog.stop()


async def test_the_timer_armed_by_an_earlier_call_times_out_a_later_one_at_its_own_due_time() -> None:
    """Quick calls keep coming, then one hangs: it times out about ``delay`` after it started,
    not when the timer armed by the first call fires."""
    delay = 0.5  # long next to a loop turn: no stall of a loaded machine passes for a timeout
    watchdog = Watchdog(delay)
    task = current()
    loop = asyncio.get_running_loop()
    first = loop.time()
    while loop.time() - first < delay * 0.75:  # calls that end in time, for most of a period
        watchdog.start(task)
        await asyncio.sleep(0.005)
        assert not watchdog.stop()
    started = loop.time()
    watchdog.start(task)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(10)
    assert watchdog.stop()
    assert loop.time() - started >= delay - 0.002  # the first call's timer re-armed, it did not fire on this one
    assert task.cancelling() == 0


async def test_no_call_is_cancelled_while_none_runs() -> None:
    """The timer fires while the lane is between calls: nothing is cancelled, the next call is timed afresh."""
    watchdog = Watchdog(0.01)
    task = current()
    watchdog.start(task)
    assert not watchdog.stop()
    await asyncio.sleep(0.05)  # the timer fires now, with no call running
    assert task.cancelling() == 0
    watchdog.start(task)
    await asyncio.sleep(0)
    assert not watchdog.stop()
    watchdog.start(task)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(10)
    assert watchdog.stop()


async def test_a_cancellation_from_outside_is_not_mistaken_for_the_timeout() -> None:
    started = asyncio.Event()
    watchdog = Watchdog(10)

    async def call() -> bool:
        watchdog.start(current())
        try:
            started.set()
            await asyncio.sleep(10)
        finally:
            assert not watchdog.stop()
        return True

    task = asyncio.create_task(call())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_from_outside_during_a_timeout_still_counts() -> None:
    """Both the timer and someone else cancelled the task: after stop(), the other's cancellation remains."""
    watchdog = Watchdog(0.01)
    task = current()
    watchdog.start(task)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(10)
    task.cancel()  # another cancellation arrives before the call ends
    assert watchdog.stop()
    assert task.cancelling() > watchdog.cancelling
    task.uncancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(0)  # the pending cancel() is delivered here


async def test_a_handler_that_swallows_the_timeout_still_counts_as_timed_out() -> None:
    watchdog = Watchdog(0.01)
    task = current()
    watchdog.start(task)
    with contextlib.suppress(asyncio.CancelledError):  # answers late instead
        await asyncio.sleep(10)
    assert watchdog.stop()
    assert task.cancelling() == 0


async def test_the_armed_timer_keeps_nothing_of_the_call_that_armed_it_alive() -> None:
    """The timer outlives the call (it rests armed for the next ones): what the call's context held
    (the engine's CallScope, hence the batch) must not stay reachable through it."""
    import contextvars
    import gc
    import weakref

    class Held:
        pass

    scope: contextvars.ContextVar[Held | None] = contextvars.ContextVar("scope", default=None)
    watchdog = Watchdog(60)
    task = current()

    async def call() -> weakref.ref[Held]:
        held = Held()
        scope.set(held)  # as CallScope does for the call's duration, in a copy of the context
        watchdog.start(task)
        await asyncio.sleep(0)
        assert not watchdog.stop()
        return weakref.ref(held)

    calling = asyncio.create_task(call(), context=contextvars.copy_context())
    ref = await calling
    del calling
    for _ in range(3):
        await asyncio.sleep(0)  # the loop lets go of the finished task
    gc.collect()
    assert watchdog._handle is not None  # still armed: the case that held the call's context
    assert ref() is None
