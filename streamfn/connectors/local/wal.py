"""When the local SQLite files copy their write-ahead log back into the database (a checkpoint).

SQLite checkpoints inside the commit that takes the WAL past ``wal_autocheckpoint`` frames: with
two fsyncs that is 10-40 ms on an ordinary disk, spent between a local append's arrival time and
its records becoming visible, or on the daemon's event loop for a checkpoint store commit. So each
writer counts what it wrote (``WalCount``) and checkpoints once that is due, when it is done: the
log after an append's commit, wake-ups and merges; the checkpoint store in a thread. SQLite's own
checkpoint stays as a safety net far beyond (``SAFETY_FRAMES``), for writers that never reach their
count: a process appending once and exiting while the daemon keeps the file open.

Nothing here opens the database's files itself: closing any descriptor of a file drops every POSIX
lock this process holds on it, SQLite's included (another process would then reset the wal-index
under this one's feet). Only SQLite's own connections touch them.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

log = logging.getLogger("streamfn.connectors.local.wal")

#: A writer checkpoints once it wrote about this many frames (pages) since: SQLite's own default.
CHECKPOINT_FRAMES = 1000
#: SQLite checkpoints inside a commit past this many frames, whoever wrote them.
SAFETY_FRAMES = 10 * CHECKPOINT_FRAMES


def quiet_commits(conn: sqlite3.Connection) -> None:
    """Commits of this connection checkpoint only past ``SAFETY_FRAMES``: its writer does it before."""
    conn.execute(f"PRAGMA wal_autocheckpoint={SAFETY_FRAMES}")


class WalCount:
    """Frames one writer put in the WAL since its last checkpoint, as it estimates them."""

    def __init__(self) -> None:
        self.frames = 0

    def wrote(self, frames: int) -> None:
        self.frames += frames

    def due(self) -> bool:
        """True (once, starting the count over) when a checkpoint is due."""
        if self.frames < CHECKPOINT_FRAMES:
            return False
        self.frames = 0
        return True


def checkpoint(conn: sqlite3.Connection, path: Path) -> None:
    """Copy the WAL into the database (PASSIVE: it waits for no reader or writer and does what it
    can). Only housekeeping: a failure leaves the WAL longer, and the next one tries again."""
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    except sqlite3.Error as exc:
        log.debug("checkpointing the WAL failed; the next one tries again",
                  extra={"path": str(path), "error": repr(exc)})


def checkpoint_file(path: Path) -> None:
    """``checkpoint`` on a SQLite connection of its own (for a thread: the writer's stays on its own)."""
    try:
        conn = sqlite3.connect(path, timeout=0)
    except sqlite3.Error:
        return
    try:
        checkpoint(conn, path)
    finally:
        conn.close()
