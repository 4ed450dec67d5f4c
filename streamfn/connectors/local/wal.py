"""When the local SQLite files copy their write-ahead log back into the database (a checkpoint).

SQLite checkpoints inside the commit that takes the WAL past ``wal_autocheckpoint`` pages: with
two fsyncs that is 10-40 ms on an ordinary disk, spent between a local append's arrival time and
its records becoming visible, or on the daemon's event loop for a checkpoint store commit. The
local files switch that off (``quiet_commits``) and checkpoint when their writer is done instead:
the log after an append's commit, wake-ups and merges; the checkpoint store in a thread.

Whether one is due is read where SQLite keeps it for every process: the wal-index header in the
``-shm`` file (its layout is part of SQLite's file format: https://www.sqlite.org/walformat.html),
whose ``mxFrame`` counts the frames in the WAL and ``nBackfill`` those already checkpointed.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
from pathlib import Path

log = logging.getLogger("streamfn.connectors.local.wal")

#: A checkpoint is due once this many frames (pages) wait in the WAL: SQLite's own default.
CHECKPOINT_FRAMES = 1000
#: Where the wal-index keeps ``mxFrame`` (in the first header copy) and ``nBackfill``: native u32s.
_MX_FRAME = struct.Struct("=I")
_MX_FRAME_AT, _BACKFILL_AT = 16, 96


def quiet_commits(conn: sqlite3.Connection) -> None:
    """No checkpoint inside this connection's commits: its writer runs ``checkpoint`` when due."""
    conn.execute("PRAGMA wal_autocheckpoint=0")


def frames_waiting(path: Path) -> int:
    """Frames in the WAL of the SQLite file ``path`` not yet copied into it (0 when it cannot tell)."""
    try:
        fd = os.open(f"{path}-shm", os.O_RDONLY)
    except OSError:
        return 0
    try:
        header = os.pread(fd, _BACKFILL_AT + 4, 0)
    except OSError:
        return 0
    finally:
        os.close(fd)
    if len(header) < _BACKFILL_AT + 4:
        return 0
    (frames,) = _MX_FRAME.unpack_from(header, _MX_FRAME_AT)
    (copied,) = _MX_FRAME.unpack_from(header, _BACKFILL_AT)
    return int(frames - copied if frames >= copied else frames)


def checkpoint_due(path: Path, frames: int | None = None) -> bool:
    """Whether ``frames`` (default ``CHECKPOINT_FRAMES``) or more wait in the WAL of ``path``."""
    return frames_waiting(path) >= (CHECKPOINT_FRAMES if frames is None else frames)


def checkpoint(conn: sqlite3.Connection, path: Path) -> None:
    """Copy the WAL into the database (PASSIVE: it waits for no reader or writer and does what it
    can). Only housekeeping: a failure leaves the WAL longer, and the next due check tries again."""
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    except sqlite3.Error as exc:
        log.debug("checkpointing the WAL failed; the next write tries again",
                  extra={"path": str(path), "error": repr(exc)})


def checkpoint_file(path: Path) -> None:
    """``checkpoint`` on a connection of its own (for a thread: the writer's stays on its own)."""
    try:
        conn = sqlite3.connect(path, timeout=0)
    except sqlite3.Error:
        return
    try:
        checkpoint(conn, path)
    finally:
        conn.close()
