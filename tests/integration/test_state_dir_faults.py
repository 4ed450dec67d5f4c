"""A state folder on a disk that really fills up (a small tmpfs): the local log and checkpoint
store raise RetryableError(kind="storage"), take nothing as written that is not durable, and
recover on their own once space is freed; a daemon then leaves no duplicate output."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streamfn.connectors.local.log import LocalLog
from streamfn.connectors.local.store import LocalCheckpointStore
from streamfn.errors import RetryableError
from streamfn.protocols.checkpoint import Checkpoint
from streamfn.records import Position
from tests.pipelines import append, daemon, kill, output_objects, write_pipeline


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of this test's own, so filling it touches nothing else."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs these as root)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill ``disk`` but ``leave`` bytes; delete the returned file to free the space again."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, bytes(size))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        if leave:
            os.ftruncate(fd, os.fstat(fd).st_size - leave)
    finally:
        os.close(fd)
    return filler


def remount(disk: Path, mode: str) -> None:
    done = subprocess.run(["mount", "-o", f"remount,{mode}", str(disk)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"remounting the tmpfs {mode} is not permitted here: {done.stderr.strip()}")


def storage_error(call: Callable[[], object]) -> RetryableError:
    with pytest.raises(RetryableError) as raised:
        call()
    assert raised.value.kind == "storage"
    return raised.value


async def async_storage_error(call: Callable[[], object]) -> RetryableError:
    with pytest.raises(RetryableError) as raised:
        await call()  # type: ignore[misc]
    assert raised.value.kind == "storage"
    return raised.value


async def until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    import asyncio

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def stored_state(path: Path) -> dict[str, bytes]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT shard_id, state FROM checkpoints"))


async def test_checkpoint_store_on_a_full_disk_retries_then_recovers_by_itself(small_disk: Path) -> None:
    path = small_disk / "checkpoints.sqlite3"
    store = LocalCheckpointStore(path, "p", interval=0.01)
    await store.open()
    try:
        await store.record_pending("shard-0000", Position(1), Position(10))
        await store.save("shard-0000", Checkpoint(position=Position(10)))
        await store.flush()
        filler = fill(small_disk)

        # The measured defect: the retry of a failed record_pending returned at once (the bounds were
        # already in memory) and the sink write went ahead unprotected. Every retry must fail until durable.
        for _ in range(3):
            error = await async_storage_error(lambda: store.record_pending("shard-0000", Position(11), Position(20)))
            assert str(path) in str(error) and "free space" in str(error)
        assert (await store.load("shard-0000")) == Checkpoint(position=Position(10))
        await async_storage_error(lambda: store.save("shard-0001", Checkpoint(position=Position(5))))
        await async_storage_error(store.flush)

        filler.unlink()
        # Nobody calls flush: the flusher retries with backoff and writes shard-0001's checkpoint on its own.
        await until(lambda: "shard-0001" in stored_state(path))
        await store.record_pending("shard-0000", Position(11), Position(20))
    finally:
        await store.close()

    reopened = LocalCheckpointStore(path, "p")
    await reopened.open()
    try:
        assert await reopened.load("shard-0000") == Checkpoint(position=Position(10),
                                                               pending=((Position(11), Position(20)),))
        assert await reopened.load("shard-0001") == Checkpoint(position=Position(5))
    finally:
        await reopened.close()


def test_local_log_on_a_full_disk_refuses_appends_whole_and_reads_on(small_disk: Path) -> None:
    log = LocalLog(small_disk / "log.sqlite3")
    try:
        log.create_stream("s", 1)
        log.append("s", [("k", b"before")] * 10)
        filler = fill(small_disk)
        big = [("k", os.urandom(200))] * 100
        for _ in range(2):
            storage_error(lambda: log.append("s", big))
        assert log.last_seq("s", "shard-0000") == 10  # nothing of the failed appends is there
        assert [r.data for r in log.read("s", "shard-0000", 0, 100)] == [b"before"] * 10
        filler.unlink()
        assert log.append("s", big) == 100
        assert [r.sequence for r in log.read("s", "shard-0000", 10, 1000)] == list(range(11, 111))
        assert log._conn().execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        log.close()


def test_a_daemon_whose_state_disk_fills_blocks_then_resumes_with_no_duplicate(
    small_disk: Path, tmp_path: Path,
) -> None:
    out = tmp_path / "out"  # the output on another disk: only the state folder fills up
    config = write_pipeline(
        small_disk / "pipe", """
        import time

        def handle(batch, context):
            time.sleep(0.005)
            return [{"shard": r.shard_id, "seq": r.sequence} for r in batch]
        """,
        shards=2, sinks=f'[[sinks]]\ntype = "local"\npath = "{out}"\nfsync = false\n',
    )
    total = 3000
    append(config, [(f"k{i}", b"{}") for i in range(total)])

    def handled() -> list[tuple[str, int]]:
        return [(item["shard"], item["seq"]) for items in output_objects(out).values() for item in items]

    # stderr to a file, not a pipe nobody reads while the disk is full: ~60 KB of retry warnings would
    # fill a pipe's 64 KiB buffer and block the daemon on its next log line.
    log_file = tmp_path / "daemon.log"
    with open(log_file, "wb") as log_out:
        process = subprocess.Popen([sys.executable, "-m", "streamfn", "run", str(config)], cwd=config.parent,
                                   stdout=subprocess.DEVNULL, stderr=log_out, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while len(handled()) < 200:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.02)
        filler = fill(small_disk)
        time.sleep(1.5)
        stalled = len(handled())
        time.sleep(1.0)
        assert len(handled()) <= stalled + 20 * 2, "sink writes went on with no durable pending record"
        assert stalled < total
        filler.unlink()
        deadline = time.monotonic() + 60
        while len(set(handled())) < total:
            assert time.monotonic() < deadline, f"no recovery after space was freed: {len(set(handled()))}"
            assert process.poll() is None
            time.sleep(0.1)
        kill(process, signal.SIGTERM)
        process.wait(timeout=30)
        stderr = log_file.read_bytes()
        assert process.returncode == 0, stderr.decode()[-3000:]
        assert b"SQLITE_FULL" in stderr
    finally:
        kill(process)

    again = daemon(config, "--until-caught-up")
    _, stderr = again.communicate(timeout=60)
    assert again.returncode == 0, stderr.decode()[-3000:]
    seen = handled()
    assert len(seen) == len(set(seen)) == total  # every record's output exactly once


def test_produce_on_a_full_disk_says_how_many_records_went_in(small_disk: Path) -> None:
    config = write_pipeline(small_disk / "pipe", "def handle(batch, context):\n    return []\n", shards=2)
    append(config, [("k", b"{}")])
    log_path = config.parent / "state" / "log.sqlite3"
    filler = fill(small_disk, leave=2 << 20)  # room for one 5,000-record chunk, not four
    done = subprocess.run([sys.executable, "-m", "streamfn", "produce", str(config), "--count", "20000", "--quiet"],
                          capture_output=True, text=True, timeout=60, check=False)
    filler.unlink()
    assert done.returncode == 1, done.stderr
    log = LocalLog(log_path)
    try:
        appended = sum(log.last_seq("s", shard) for shard in log.shard_ids("s")) - 1
        assert appended % 5000 == 0 and appended < 20000
        assert f"stopped after appending the first {appended:,} records" in done.stderr
        assert "SQLITE_FULL" in done.stderr and "free space" in done.stderr and "Traceback" not in done.stderr
        assert log._conn().execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        log.close()


async def test_a_read_only_state_folder_is_retryable_and_recovers(small_disk: Path) -> None:
    log = LocalLog(small_disk / "log.sqlite3")
    log.create_stream("s", 1)
    log.append("s", [("k", b"v")] * 5)
    log.close()
    store = LocalCheckpointStore(small_disk / "checkpoints.sqlite3", "p")
    await store.open()
    await store.save("shard-0000", Checkpoint(position=Position(5)))
    await store.close()

    remount(small_disk, "ro")
    try:
        storage_error(lambda: LocalLog(small_disk / "log.sqlite3"))
        await async_storage_error(LocalCheckpointStore(small_disk / "checkpoints.sqlite3", "p").open)
    finally:
        remount(small_disk, "rw")
    log = LocalLog(small_disk / "log.sqlite3")
    store = LocalCheckpointStore(small_disk / "checkpoints.sqlite3", "p")
    await store.open()
    try:
        assert [r.sequence for r in log.read("s", "shard-0000", 0, 10)] == [1, 2, 3, 4, 5]
        assert await store.load("shard-0000") == Checkpoint(position=Position(5))
    finally:
        log.close()
        await store.close()
