"""The daemon gives free heap memory back once after each busy spell, and only then."""

from __future__ import annotations

import asyncio
import itertools
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfn.engine import heap


@given(deltas=st.lists(st.integers(0, 3), min_size=1, max_size=30))
def test_one_release_after_each_busy_spell_and_none_while_idle(deltas: list[int]) -> None:
    """Each look sees the handled count grow by ``deltas[i]``: a release comes exactly at the first
    look without growth after looks with growth."""
    busy, before, count, releases = False, 0, 0, []
    for i, delta in enumerate(deltas):
        count += delta
        busy, release = heap.idle_step(busy, before, count)
        if release:
            releases.append(i)
        before = count
    for i in releases:
        assert deltas[i] == 0  # never while records move
    for a, b in itertools.pairwise(releases):
        assert any(deltas[a + 1 : b])  # a busy spell between two releases
    for i in range(1, len(deltas)):
        if deltas[i] == 0 and deltas[i - 1] != 0:
            assert i in releases  # the first idle look after a busy one


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_release_free_heap_runs_on_glibc() -> None:
    assert heap.release_free_heap() is True


async def test_the_watcher_releases_after_records_stop_moving(monkeypatch: pytest.MonkeyPatch) -> None:
    released: list[int] = []
    def release() -> bool:
        released.append(1)
        return True

    monkeypatch.setattr(heap, "release_free_heap", release)
    handled = [0]
    task = asyncio.create_task(heap.release_when_idle(lambda: handled[0], every=0.01))
    try:
        await asyncio.sleep(0.05)
        assert released == []  # idle from the start: nothing to give back
        handled[0] = 10
        for _ in range(200):
            await asyncio.sleep(0.01)
            if released:
                break
        await asyncio.sleep(0.05)
        assert released == [1]  # once, not again while still idle
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
