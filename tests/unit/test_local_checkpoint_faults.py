"""The local checkpoint store under real SQLITE_FULL faults (``PRAGMA max_page_count``), as a property:
whatever fails when, a ``record_pending`` that returned is durable, one that raised left nothing
recorded, and once the disk has room again everything in memory reaches the file."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from streamfn.connectors.local.store import LocalCheckpointStore, decode_checkpoint
from streamfn.errors import RetryableError
from streamfn.protocols.checkpoint import Checkpoint
from streamfn.records import Position

# Sequences of 1000 digits make each pending entry ~2 KB: a capped file soon has no room (the
# store keeps any int as text; real sources stay within 128 bits).
BIG = 10**1000
BATCH = 10
SHARDS = [f"shard-{i:04d}" for i in range(3)]

# Pending writes weigh most: they are what a full disk must never let through unrecorded.
operations = st.lists(
    st.tuples(st.sampled_from(["pending"] * 4 + ["save", "save_now", "flush", "full", "room"]),
              st.sampled_from(SHARDS)),
    min_size=1, max_size=60,
)


def durable(path: Path) -> dict[str, Checkpoint]:
    """What a crash right now would leave: the file as another connection reads it."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT shard_id, state FROM checkpoints").fetchall()
    return {shard: decode_checkpoint(state) for shard, state in rows}


def bounds(batch: int) -> tuple[Position, Position]:
    return Position(BIG + batch * BATCH + 1), Position(BIG + (batch + 1) * BATCH)


def guarded(checkpoint: Checkpoint | None, first: Position, last: Position) -> bool:
    """Whether a restart from ``checkpoint`` forms the batch [first, last] again or is past it."""
    if checkpoint is None:
        return False
    past = checkpoint.position is not None and checkpoint.position >= last
    return past or (first, last) in checkpoint.pending


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
async def test_nothing_counts_as_recorded_until_it_is_durable(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, str]],
) -> None:
    path = tmp_path_factory.mktemp("faults") / "checkpoints.sqlite3"
    store = LocalCheckpointStore(path, "p", interval=3600)  # the flusher stays out of the way: calls decide
    await store.open()
    db = store._db
    assert db is not None
    issued = dict.fromkeys(SHARDS, 0)  # batches recorded so far, per shard
    done = dict.fromkeys(SHARDS, 0)  # batches whose checkpoint was saved
    try:
        for kind, shard in ops:
            if kind == "full":
                pages = db.execute("PRAGMA page_count").fetchone()[0]
                db.execute(f"PRAGMA max_page_count={pages}")
            elif kind == "room":
                db.execute("PRAGMA max_page_count=1000000")
            elif kind == "flush":
                try:
                    await store.flush()
                except RetryableError as exc:
                    assert exc.kind == "storage"
            elif kind == "pending":
                first, last = bounds(issued[shard])
                before = await store.load(shard)
                try:
                    await store.record_pending(shard, first, last)
                except RetryableError:
                    event("record_pending failed")
                    assert await store.load(shard) == before  # not taken as recorded: the retry writes it
                    continue
                assert guarded(durable(path).get(shard), first, last)
                issued[shard] += 1
            elif done[shard] < issued[shard]:  # save: the oldest recorded batch finished
                checkpoint = Checkpoint(position=bounds(done[shard])[1])
                # ``save_now`` as the engine calls it: ``save`` when it is not taken (the store is failing).
                if kind == "save" or not store.save_now(shard, checkpoint):
                    with contextlib.suppress(RetryableError):  # kept in memory, written once there is room
                        await store.save(shard, checkpoint)
                else:
                    event("taken by save_now")
                done[shard] += 1
            on_disk = durable(path)
            for name, checkpoint in on_disk.items():  # the file is never ahead of memory
                current = await store.load(name)
                assert current is not None and (current.position or Position(0)) >= (
                    checkpoint.position or Position(0))
        db.execute("PRAGMA max_page_count=1000000")
        await store.flush()
        assert durable(path) == {shard: await store.load(shard) for shard in SHARDS if await store.load(shard)}
    finally:
        db.execute("PRAGMA max_page_count=1000000")
        await store.close()
