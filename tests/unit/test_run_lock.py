"""The run lock a daemon holds beside its local checkpoints."""

from __future__ import annotations

from pathlib import Path


async def test_a_run_lock_that_cannot_be_made_does_not_stop_the_pipeline(tmp_path: Path) -> None:
    from streamfn.engine.run_lock import RunLock, is_held

    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the lock's folder should be: mkdir fails
    lock = RunLock(blocked / "checkpoints.sqlite3.p.running")
    await lock.acquire(wait=0.1)
    lock.release()
    held = RunLock(tmp_path / "checkpoints.sqlite3.p.running")
    await held.acquire(wait=0.1)
    assert is_held(held.path)
    held.release()
    assert not is_held(held.path)
