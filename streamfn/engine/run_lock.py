"""The "a daemon runs this pipeline" mark for local checkpoints: a file lock beside the store.

A running pipeline holds a shared lock; ``streamfn checkpoints reset|set`` takes the exclusive one,
so an edit is refused while a daemon runs the pipeline (the daemon would overwrite the edit with
its in-memory checkpoints), and a daemon waits while an edit is being written. The kernel drops
the lock when the process dies, so a crashed daemon never leaves a stale mark behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from .. import registry
from ..config import LoadedPipeline
from ..errors import CheckpointError

log = logging.getLogger("streamfn.daemon")


def local_store_path(loaded: LoadedPipeline) -> Path | None:
    """The SQLite file of the pipeline's local checkpoints; None when they are kept elsewhere
    (a lease table, a Kafka group: a Kafka source without ``[checkpoints]`` commits to its group)."""
    configured = loaded.config.checkpoints
    if configured is None and loaded.config.source.own_checkpoints is not None:
        return None
    return (configured or registry.default_checkpoints()).local_file(loaded.context)


def lock_path(store: Path, pipeline: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", pipeline)
    return store.with_name(f"{store.name}.{safe}.running")


class DaemonRunning(CheckpointError):
    """A daemon runs the pipeline whose local checkpoints an operator tried to edit."""


class RunLock:
    """The shared lock a running pipeline holds (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    async def acquire(self, wait: float = 30.0) -> None:
        """Take the shared lock, waiting up to ``wait`` seconds for an edit in progress to finish.

        A lock file that cannot be made (a read-only or full state folder) does not stop the pipeline:
        the lock only guards operators' edits, and the store reports such a folder itself."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            log.warning("running without the run lock %s (%s): `streamfn checkpoints` cannot tell that this "
                        "daemon runs the pipeline", self.path, exc.strerror or exc)
            return
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise CheckpointError(f"{self.path} stays locked by `streamfn checkpoints`: "
                                          "wait for the edit to finish, then start again") from None
                await asyncio.sleep(0.1)
                continue
            self._fd = fd
            return

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None


def is_held(path: Path) -> bool:
    """Whether some process holds the lock at ``path`` (shared or exclusive), without creating it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextlib.contextmanager
def editing(loaded: LoadedPipeline, store: Path, *, force: bool) -> Iterator[None]:
    """Hold the exclusive lock while local checkpoints are edited; refuse if a daemon holds the
    shared one, unless ``force`` (then the edit goes ahead, and the daemon may overwrite it)."""
    path = lock_path(store, loaded.config.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not force:
                raise DaemonRunning(
                    f"a running daemon holds pipeline {loaded.config.name!r} ({path}): it would overwrite this "
                    "edit with its own checkpoints; stop it first, or --force (and restart it after)") from None
        yield
    finally:
        os.close(fd)
