"""The handler call's Deadline keeps asyncio.timeout's rules: a timeout becomes TimeoutError and leaves the
task uncancelled; a cancellation from outside passes through as CancelledError."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from streamfn.engine.deadline import Deadline


async def test_an_await_past_the_deadline_raises_timeout_and_the_task_goes_on() -> None:
    deadline = Deadline(0.01)
    with pytest.raises(TimeoutError):
        async with deadline:
            await asyncio.sleep(10)
    assert deadline.expired()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)  # no cancellation left pending for the next await


async def test_an_await_that_ends_in_time_is_untouched() -> None:
    deadline = Deadline(10, asyncio.current_task())
    async with deadline:
        await asyncio.sleep(0)
    assert not deadline.expired()


async def test_a_cancellation_from_outside_is_not_mistaken_for_the_timeout() -> None:
    started = asyncio.Event()

    async def call() -> None:
        async with Deadline(10):
            started.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(call())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_handler_that_swallows_the_timeout_still_counts_as_timed_out() -> None:
    deadline = Deadline(0.01)
    async with deadline:
        with contextlib.suppress(asyncio.CancelledError):  # answers late instead
            await asyncio.sleep(10)
    assert deadline.expired()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
