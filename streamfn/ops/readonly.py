"""The local state (log and checkpoints) read without writing a byte: what ``status`` and ``replay`` look at.

SQLite's read-only mode still creates the ``-wal`` and ``-shm`` files of a WAL database closed
cleanly. So a file without a ``-wal`` beside it (nothing left uncheckpointed) is opened
``immutable``: no lock, no side file, nothing written. A file with one (a daemon runs, or one
was killed) is opened ``mode=ro``: its WAL holds the newest commits, and SQLite only maps the
existing ``-shm`` index to read them.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from urllib.parse import quote

import msgspec

from ..connectors.local.log import LocalLog
from ..connectors.local.store import decode_checkpoint
from ..errors import StateMismatchError
from ..protocols.checkpoint import Checkpoint


def connect_readonly(path: Path) -> sqlite3.Connection | None:
    """A read-only connection to the SQLite file ``path``, None when it does not exist."""
    if not path.is_file():
        return None
    mode = "mode=ro" if Path(f"{path}-wal").exists() else "immutable=1"
    conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?{mode}", uri=True, check_same_thread=False)
    conn.execute("PRAGMA query_only=1")
    return conn


class ReadOnlyLog(LocalLog):
    """A local log opened for reading only: never created, upgraded or given an id here."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:  # no set-up: nothing is written
        self.path = Path(path)
        self._local = threading.local()
        self._local.conn = conn
        self._connections = [conn]
        self._lock = threading.Lock()
        self._closed = False
        self._encode = msgspec.msgpack.Encoder().encode
        self._shard_counts = {}
        self._partial = {}
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        row = conn.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone() if "meta" in tables else None
        #: None for a log written before logs had ids (a run gives it one).
        self.log_id = None if row is None else str(row[0])  # type: ignore[assignment]

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection = self._local.conn
        return conn


def open_log(path: Path) -> ReadOnlyLog | None:
    """The local log at ``path`` for reading, None if it was never created."""
    conn = connect_readonly(path)
    return None if conn is None else ReadOnlyLog(path, conn)


class StoredState(msgspec.Struct, frozen=True):
    """One pipeline's rows in a local checkpoint file."""

    checkpoints: dict[str, Checkpoint]
    #: The id of the log these checkpoints are positions in (None: not recorded yet).
    log_id: str | None


def read_local_checkpoints(path: Path, pipeline: str) -> StoredState:
    """The pipeline's checkpoints in the local store file ``path`` (empty if it does not exist)."""
    conn = connect_readonly(path)
    if conn is None:
        return StoredState({}, None)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "checkpoints" not in tables:
            return StoredState({}, None)
        rows = conn.execute("SELECT shard_id, state FROM checkpoints WHERE pipeline = ?", (pipeline,)).fetchall()
        identity = None
        if "log_identity" in tables:
            found = conn.execute("SELECT log_id FROM log_identity WHERE pipeline = ?", (pipeline,)).fetchone()
            identity = None if found is None else str(found[0])
        return StoredState({shard: decode_checkpoint(state) for shard, state in rows}, identity)
    finally:
        conn.close()


def check_identity(state: StoredState, log_id: str | None, tips: dict[str, int], *, pipeline: str,
                   path: Path) -> None:
    """What ``LocalCheckpointStore.bind_log`` checks, without recording anything.

    Raises StateMismatchError when the checkpoints were made against another log, or (when no
    log was recorded yet) when one resumes past its shard's tip.
    """
    fix = (" the log file was recreated or replaced. Put the old log file back, or start this pipeline over on"
           f" the new log with `streamfn checkpoints reset CONFIG` (it forgets the checkpoints in {path.name})")
    if state.log_id is not None and log_id is not None and state.log_id != log_id:
        raise StateMismatchError(f"checkpoints of pipeline {pipeline!r} in {path} were made against the local log"
                                 f" with id {state.log_id}, but the log now has id {log_id}:" + fix)
    if state.log_id is None:
        for shard_id, checkpoint in state.checkpoints.items():
            tip, position = tips.get(shard_id), checkpoint.position
            if tip is not None and position is not None and position.sequence > tip:
                raise StateMismatchError(f"checkpoints of pipeline {pipeline!r} in {path} resume {shard_id} after"
                                         f" sequence {position.sequence}, but the log ends at {tip}:" + fix)
