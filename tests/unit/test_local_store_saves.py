"""The local store's save keeps a shard's latest checkpoint with the pending bounds it has not
passed (``advance``), whichever path a save takes (the lean one when there is nothing to carry,
a shard already waiting for its commit): after any mix of saves and pending records, what a new
store reads back from the file is what the protocol's own functions say it must be."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfn.connectors.local.store import LocalCheckpointStore
from streamfn.protocols.checkpoint import Checkpoint, advance, with_pending
from streamfn.records import Position

SHARDS = ("shard-0", "shard-1")

save = st.tuples(st.just("save"), st.sampled_from(SHARDS), st.integers(0, 40), st.booleans())
pending = st.tuples(st.just("pending"), st.sampled_from(SHARDS), st.integers(0, 40), st.integers(0, 5))
flush = st.tuples(st.just("flush"), st.sampled_from(SHARDS), st.just(0), st.just(0))
turn = st.tuples(st.just("turn"), st.sampled_from(SHARDS), st.just(0), st.just(0))  # the flusher may run


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.one_of(save, pending, flush, turn), max_size=30), interval=st.sampled_from([0.0, 1000.0]))
def test_what_is_read_back_is_the_latest_save_with_the_pending_bounds_it_has_not_passed(
        steps: list[tuple[str, str, int, int | bool]], interval: float) -> None:
    async def run(path: Path) -> tuple[dict[str, Checkpoint | None], dict[str, Checkpoint]]:
        store = LocalCheckpointStore(path, "p", interval=interval)
        await store.open()
        model: dict[str, Checkpoint] = {}
        for kind, shard, number, extra in steps:
            if kind == "save":
                checkpoint = Checkpoint(position=Position(number), shard_end=bool(extra) and number > 35)
                await store.save(shard, checkpoint)
                model[shard] = advance(model.get(shard), checkpoint)
            elif kind == "pending":
                first, last = Position(number), Position(number + int(extra))
                await store.record_pending(shard, first, last)
                model[shard] = with_pending(model.get(shard), first, last) or model[shard]
            elif kind == "flush":
                await store.flush()
            else:
                await asyncio.sleep(0)
        await store.close()
        reopened = LocalCheckpointStore(path, "p")
        await reopened.open()
        try:
            return {shard: await reopened.load(shard) for shard in SHARDS}, model
        finally:
            await reopened.close()

    with tempfile.TemporaryDirectory() as folder:
        stored, model = asyncio.run(run(Path(folder) / "checkpoints.sqlite3"))
    for shard in SHARDS:
        assert stored[shard] == model.get(shard)


async def test_the_flusher_checkpoints_the_wal_in_a_thread_not_in_a_commit(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint inside a commit on the event loop stalled every shard for its two fsyncs; the
    flusher runs them in a thread before SQLite would (only far past its default), so the WAL stays short."""
    import threading

    from streamfn.connectors.local import store as store_module
    from streamfn.connectors.local import wal
    from tests.unit.test_local_log import wal_frames

    monkeypatch.setattr(wal, "CHECKPOINT_FRAMES", 20)
    threads: list[bool] = []
    real = store_module.checkpoint_file
    monkeypatch.setattr(store_module, "checkpoint_file", lambda path: (
        threads.append(threading.current_thread() is threading.main_thread()), real(path)))
    path = tmp_path / "checkpoints.sqlite3"
    store = LocalCheckpointStore(path, "p", interval=0.0)
    await store.open()
    try:
        assert store._conn().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == wal.SAFETY_FRAMES
        for n in range(1, 301):
            await store.save("shard-0", Checkpoint(position=Position(n)))
            await asyncio.sleep(0)  # the flusher commits each one
        await store.flush()
        frames = wal_frames(path)
    finally:
        await store.close()
    assert threads and not any(threads), "checkpoints ran on the event loop's thread, or never"
    assert frames < 100, f"{frames} frames: the WAL was never checkpointed"
