"""The local checkpoint store: one SQLite file in the pipeline's state folder.

WAL mode with ``synchronous=NORMAL``: a committed transaction survives ``kill -9`` of the
process (not a power cut, which needs ``synchronous=FULL``: set ``durable_against_power_loss``).
Saves are coalesced: every shard's latest checkpoint is written in one transaction at most
every ``interval`` seconds, so many shards and many batches cost one commit, and a shard never
waits on the disk between batches. Pending batch bounds are written at once: they guard a
sink write.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from ..errors import CheckpointError
from ..records import Position
from .base import Checkpoint, advance, with_pending

if TYPE_CHECKING:
    from ..components import BuildContext

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    pipeline TEXT NOT NULL,
    shard_id TEXT NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (pipeline, shard_id)
) WITHOUT ROWID;
"""

class _StoredCheckpoint(msgspec.Struct, omit_defaults=True):
    """A checkpoint as stored: sequences as decimal text, since Kinesis and DynamoDB Streams
    sequence numbers exceed the 64-bit integers msgpack and JSON encoders take."""

    position: tuple[str, int] | None = None
    shard_end: bool = False
    pending: list[tuple[str, int, str, int]] = []
    window_state: bytes | None = None


_encode_stored = msgspec.json.Encoder().encode
_decode_stored = msgspec.json.Decoder(_StoredCheckpoint).decode


def _encode(checkpoint: Checkpoint) -> bytes:
    position = checkpoint.position
    return _encode_stored(_StoredCheckpoint(
        position=None if position is None else (str(position.sequence), position.sub_sequence),
        shard_end=checkpoint.shard_end,
        pending=[(str(a.sequence), a.sub_sequence, str(b.sequence), b.sub_sequence) for a, b in checkpoint.pending],
        window_state=checkpoint.window_state,
    ))


def decode_checkpoint(state: bytes) -> Checkpoint:
    """A checkpoint as this store keeps it in its ``state`` column (for operators' tools and tests)."""
    stored = _decode_stored(state)
    return Checkpoint(
        position=None if stored.position is None else Position(int(stored.position[0]), stored.position[1]),
        shard_end=stored.shard_end,
        pending=tuple((Position(int(a), sa), Position(int(b), sb)) for a, sa, b, sb in stored.pending),
        window_state=stored.window_state,
    )


_decode = decode_checkpoint


class LocalCheckpointStoreConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type",
                                 tag="local"):
    """Checkpoints in ``<state_dir>/checkpoints.sqlite3`` (or ``path``)."""

    path: str | None = None
    #: At most one commit per this many seconds, holding every shard's latest checkpoint: a
    #: crash replays at most this much (idempotently). 0 commits as soon as the loop is free.
    interval: float = 0.05
    #: fsync every commit (survives a power cut, costs a disk flush per commit).
    durable_against_power_loss: bool = False

    def build(self, ctx: BuildContext) -> LocalCheckpointStore:
        path = ctx.resolve(self.path) if self.path else ctx.state_dir / "checkpoints.sqlite3"
        return LocalCheckpointStore(path, ctx.pipeline, interval=self.interval,
                                    full_sync=self.durable_against_power_loss)


class LocalCheckpointStore:
    """CheckpointStore on SQLite (see the module docstring for its durability)."""

    def __init__(self, path: Path, pipeline: str, *, interval: float = 0.05, full_sync: bool = False) -> None:
        self._path = path
        self._pipeline = pipeline
        self._interval = interval
        self._full_sync = full_sync
        self._db: sqlite3.Connection | None = None
        self._current: dict[str, Checkpoint] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    async def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if self._full_sync else 'NORMAL'}")
        db.execute("PRAGMA busy_timeout=10000")
        db.executescript(_SCHEMA)
        self._db = db
        self._flusher = asyncio.create_task(self._flush_loop(), name=f"checkpoints:{self._pipeline}")

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise CheckpointError("checkpoint store used before open()")
        return self._db

    async def load(self, shard_id: str) -> Checkpoint | None:
        if shard_id in self._current:
            return self._current[shard_id]
        row = self._conn().execute(
            "SELECT state FROM checkpoints WHERE pipeline=? AND shard_id=?", (self._pipeline, shard_id)
        ).fetchone()
        checkpoint = _decode(row[0]) if row else None
        if checkpoint is not None:
            self._current[shard_id] = checkpoint
        return checkpoint

    async def save(self, shard_id: str, checkpoint: Checkpoint) -> None:
        self._raise_if_failed()
        self._current[shard_id] = advance(self._current.get(shard_id), checkpoint)
        self._dirty.add(shard_id)
        self._wake.set()

    async def record_pending(self, shard_id: str, first: Position, last: Position) -> None:
        self._raise_if_failed()
        recorded = with_pending(self._current.get(shard_id), first, last)
        if recorded is None:
            return
        self._current[shard_id] = recorded
        self._dirty.add(shard_id)
        self._write()  # must be durable before the sink write it guards

    async def flush(self) -> None:
        self._raise_if_failed()
        self._write()

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        if self._db is not None:
            self._write()
            self._db.close()
            self._db = None

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise CheckpointError(f"checkpoint store {self._path} failed: {self._error!r}") from self._error

    def _write(self) -> None:
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        rows = [(self._pipeline, shard, _encode(self._current[shard])) for shard in dirty]
        db = self._conn()
        try:
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.executemany("INSERT OR REPLACE INTO checkpoints (pipeline, shard_id, state) VALUES (?,?,?)", rows)
        except BaseException:
            self._dirty |= dirty
            raise

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._interval > 0:
                await asyncio.sleep(self._interval)
            else:
                await asyncio.sleep(0)  # let every shard that finished in this loop turn join the commit
            try:
                self._write()
            except sqlite3.Error as exc:
                self._error = exc
                return
