"""The local checkpoint store: one SQLite file in the pipeline's state folder.

WAL mode with ``synchronous=NORMAL``: a committed transaction survives ``kill -9`` of the
process (not a power cut, which needs ``synchronous=FULL``: set ``durable_against_power_loss``).
Saves are coalesced: every shard's latest checkpoint is written in one transaction at most
every ``interval`` seconds, so many shards and many batches cost one commit, and a shard never
waits on the disk between batches. Pending batch bounds are written at once: they guard a
sink write.

Storage faults. A full, read-only or failing disk raises ``RetryableError(kind="storage")``
from ``record_pending``, ``save`` and ``flush``: nothing counts as recorded until it is durable,
so the engine's retry writes it again, and the flusher keeps retrying with backoff, so the store
recovers on its own once space returns.

Identity. The store records, per pipeline, the id of the local log its checkpoints are
positions in (``bind_log``) and refuses another log's: a recreated log must not be read
with the old log's checkpoints (every record up to the old position would be skipped).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import msgspec

from ...backoff import Backoff
from ...errors import CheckpointError, RetryableError, StateMismatchError
from ...protocols.checkpoint import Checkpoint, CheckpointConfig, CheckpointStore, advance, with_pending
from ...records import Position
from ...storage_errors import is_transient, storage_error, storage_faults
from .source import LocalSource
from .wal import WalCount, checkpoint_file, quiet_commits

if TYPE_CHECKING:
    from ...components import BuildContext
    from ...protocols.source import Source

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    pipeline TEXT NOT NULL,
    shard_id TEXT NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (pipeline, shard_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log_identity (
    pipeline TEXT PRIMARY KEY,
    log_id TEXT NOT NULL
) WITHOUT ROWID;
"""

log = logging.getLogger("streamfn.connectors.local.store")
#: Backoff of the flusher while the state folder fails (full disk...): it retries on its own.
RETRY_INITIAL = 0.1
RETRY_MAX = 5.0
#: Frames one commit of a few checkpoints writes (a leaf, the root, a header), for ``WalCount``.
FRAMES_PER_COMMIT = 3

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


class LocalCheckpointStoreConfig(CheckpointConfig, kw_only=True, tag="local"):
    """Checkpoints in ``<state_dir>/checkpoints.sqlite3`` (or ``path``)."""

    path: Annotated[str | None, msgspec.Meta(description=(
        "The SQLite file, relative to the config's folder; default `<state_dir>/checkpoints.sqlite3`."))] = None
    interval: Annotated[float, msgspec.Meta(description=(
        "At most one commit per this many seconds, holding every shard's latest checkpoint: a crash replays at "
        "most this much (idempotently). 0 commits as soon as the loop is free."))] = 0.05
    durable_against_power_loss: Annotated[bool, msgspec.Meta(description=(
        "fsync every commit (survives a power cut, costs a disk flush per commit)."))] = False

    def build(self, ctx: BuildContext) -> LocalCheckpointStore:
        return LocalCheckpointStore(self.local_file(ctx), ctx.pipeline, interval=self.interval,
                                    full_sync=self.durable_against_power_loss)

    def local_file(self, ctx: BuildContext) -> Path:
        return ctx.resolve(self.path) if self.path else ctx.state_dir / "checkpoints.sqlite3"


class LocalCheckpointStore(CheckpointStore):
    """CheckpointStore on SQLite (see the module docstring for its durability and faults)."""

    def __init__(self, path: Path, pipeline: str, *, interval: float = 0.05, full_sync: bool = False) -> None:
        self._path = path
        self._pipeline = pipeline
        self._interval = interval
        self._full_sync = full_sync
        self._db: sqlite3.Connection | None = None
        #: Every checkpoint of the pipeline, read once at ``open`` (one query, not one per shard:
        #: 1,024 shards starting cost 1,024 lookups) and kept current by every write made here.
        self._current: dict[str, Checkpoint] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        #: A failure retrying will not fix (a corrupt file): every later call raises it.
        self._error: BaseException | None = None
        #: The last write failed on a transient fault; the next successful write clears it.
        self._failing: RetryableError | None = None
        self._wal = WalCount()

    async def open(self) -> None:
        with storage_faults(self._path, "opening the checkpoint store"):
            self._path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(f"PRAGMA synchronous={'FULL' if self._full_sync else 'NORMAL'}")
                db.execute("PRAGMA busy_timeout=10000")
                quiet_commits(db)  # the flusher checkpoints, in a thread
                db.executescript(_SCHEMA)
            except BaseException:
                db.close()
                raise
        self._db = db
        try:
            self._current = self._stored()
        except BaseException:
            db.close()
            self._db = None
            raise
        self._flusher = asyncio.create_task(self._flush_loop(), name=f"checkpoints:{self._pipeline}")

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise CheckpointError("checkpoint store used before open()")
        return self._db

    async def load(self, shard_id: str) -> Checkpoint | None:
        """From memory: the store read every checkpoint of its pipeline when it opened, and only
        this object writes them while it is open (one daemon per pipeline, operators' edits
        while none runs)."""
        self._conn()
        return self._current.get(shard_id)

    def save_now(self, shard_id: str, checkpoint: Checkpoint) -> bool:
        """What ``save`` does while the state folder works: keep ``checkpoint`` in memory for the
        flusher (called once per batch, without a coroutine). False once writes fail: ``save`` then
        says why, and the caller retries it."""
        if self._error is not None or self._failing is not None:
            return False
        self._keep(shard_id, checkpoint)
        dirty = self._dirty
        if shard_id not in dirty:  # a dirty shard's commit is due already (the flusher was woken for it)
            dirty.add(shard_id)
            self._wake.set()
        return True

    async def save(self, shard_id: str, checkpoint: Checkpoint) -> None:
        """Keep ``checkpoint`` in memory; the flusher commits it (``save_now``). While the state
        folder is failing, write at once instead: the caller hears why, rather than saves pile up."""
        if self.save_now(shard_id, checkpoint):
            return
        self._raise_if_failed()
        self._keep(shard_id, checkpoint)
        self._dirty.add(shard_id)
        self._write()

    def _keep(self, shard_id: str, checkpoint: Checkpoint) -> None:
        previous = self._current.get(shard_id)
        if (previous is not None and previous.pending) or checkpoint.pending or checkpoint.shard_end:
            checkpoint = advance(previous, checkpoint)  # else it would return ``checkpoint`` as it is
        self._current[shard_id] = checkpoint

    async def record_pending(self, shard_id: str, first: Position, last: Position) -> None:
        self._raise_if_failed()
        previous = self._current.get(shard_id)
        recorded = with_pending(previous, first, last)
        if recorded is None:
            return  # pending bounds enter memory only once durable: this batch's are
        was_dirty = shard_id in self._dirty
        self._current[shard_id] = recorded
        self._dirty.add(shard_id)
        try:
            self._write()  # must be durable before the sink write it guards
        except BaseException:
            if previous is None:
                del self._current[shard_id]
            else:
                self._current[shard_id] = previous
            if not was_dirty:
                self._dirty.discard(shard_id)
            raise

    async def flush(self) -> None:
        self._raise_if_failed()
        self._write()

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        if self._db is not None:
            try:
                if self._error is None:
                    self._write()
            except RetryableError as exc:
                log.error("final checkpoints not written; the next run resumes from the last ones written"
                          " (batches after them are replayed under the same keys)",
                          extra={"pipeline": self._pipeline, "error": str(exc)})
            finally:
                self._db.close()
                self._db = None

    # -- log identity ----------------------------------------------------------------------

    async def bind(self, source: Source) -> None:
        """Refuse checkpoints made against another local log (a no-op for other sources)."""
        await bind_local_log(source, self)

    async def bind_log(self, log_id: str, tips: Mapping[str, int]) -> None:
        """Record that this pipeline's checkpoints are positions in the local log ``log_id``.

        Raises StateMismatchError if they were made against another log. Checkpoints written
        before logs had ids are adopted, unless one is past its shard's tip in ``tips`` (then
        they cannot be this log's: its sequences never restart).
        """
        db = self._conn()
        with storage_faults(self._path, "reading the checkpoints' log identity"):
            row = db.execute("SELECT log_id FROM log_identity WHERE pipeline=?", (self._pipeline,)).fetchone()
        if row is not None:
            if row[0] != log_id:
                raise StateMismatchError(self._mismatch(f"were made against the local log with id {row[0]}, but the"
                                                        f" log now has id {log_id}"))
            return
        for shard_id, checkpoint in self._stored().items():
            tip = tips.get(shard_id)
            position = checkpoint.position
            if tip is not None and position is not None and position.sequence > tip:
                raise StateMismatchError(self._mismatch(
                    f"resume {shard_id} after sequence {position.sequence}, but the log ends at {tip}"))
        with storage_faults(self._path, "recording the checkpoints' log identity"), db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO log_identity (pipeline, log_id) VALUES (?, ?)", (self._pipeline, log_id))

    def _mismatch(self, what: str) -> str:
        return (f"checkpoints of pipeline {self._pipeline!r} in {self._path} {what}: the log file was recreated or"
                " replaced, and resuming would skip or repeat records. Put the old log file back, or start this"
                " pipeline over on the new log with `streamfn checkpoints reset CONFIG` (it forgets this"
                f" pipeline's checkpoints in {self._path.name})")

    def _stored(self) -> dict[str, Checkpoint]:
        with storage_faults(self._path, "reading checkpoints"):
            rows = self._conn().execute("SELECT shard_id, state FROM checkpoints WHERE pipeline=?",
                                        (self._pipeline,)).fetchall()
        return {shard_id: _decode(state) for shard_id, state in rows}

    async def reset(self, shards: Sequence[str] | None = None) -> list[str]:
        """Forget the checkpoints of ``shards`` (default: all of this pipeline's); the shards reset.

        They start at the pipeline's starting position on the next run. Forgetting all also
        forgets which log they were made against. Only while no daemon runs this pipeline.
        """
        db = self._conn()
        known = sorted(self._stored())
        chosen = known if shards is None else [s for s in shards if s in known]
        with storage_faults(self._path, "resetting checkpoints"), db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("DELETE FROM checkpoints WHERE pipeline=? AND shard_id=?",
                           [(self._pipeline, shard) for shard in chosen])
            if shards is None:
                db.execute("DELETE FROM log_identity WHERE pipeline=?", (self._pipeline,))
        for shard in chosen:
            self._current.pop(shard, None)
            self._dirty.discard(shard)
        return chosen

    async def overwrite(self, checkpoints: Mapping[str, Checkpoint | None], *, forget_log: bool = False) -> None:
        """Replace shards' checkpoints exactly as given (None: forget), pending bounds and window
        state included, in one transaction: an operator's edit, made while no daemon runs the pipeline.
        ``forget_log`` also forgets which log they were made against (the next run binds the current one)."""
        db = self._conn()
        with storage_faults(self._path, "editing checkpoints"), db:
            db.execute("BEGIN IMMEDIATE")
            if forget_log:
                db.execute("DELETE FROM log_identity WHERE pipeline=?", (self._pipeline,))
            for shard, checkpoint in checkpoints.items():
                if checkpoint is None:
                    db.execute("DELETE FROM checkpoints WHERE pipeline=? AND shard_id=?", (self._pipeline, shard))
                else:
                    db.execute("INSERT OR REPLACE INTO checkpoints (pipeline, shard_id, state) VALUES (?,?,?)",
                               (self._pipeline, shard, _encode(checkpoint)))
        for shard, checkpoint in checkpoints.items():
            self._dirty.discard(shard)
            if checkpoint is None:
                self._current.pop(shard, None)
            else:
                self._current[shard] = checkpoint

    # -- writing ---------------------------------------------------------------------------

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise CheckpointError(f"checkpoint store {self._path} failed: {self._error!r}") from self._error

    def _write(self) -> None:
        """Write every dirty checkpoint in one transaction; on a failure they stay dirty."""
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        rows = [(self._pipeline, shard, _encode(self._current[shard])) for shard in dirty]
        db = self._conn()
        try:
            with db:  # commits, or rolls back whatever a failed statement or COMMIT left open
                db.execute("BEGIN IMMEDIATE")
                db.executemany("INSERT OR REPLACE INTO checkpoints (pipeline, shard_id, state) VALUES (?,?,?)", rows)
        except BaseException as exc:
            self._dirty |= dirty
            if isinstance(exc, sqlite3.Error | OSError):
                if is_transient(exc):
                    self._failing = storage_error(exc, self._path, "writing checkpoints")
                    raise self._failing from exc
                self._error = exc
                raise CheckpointError(f"checkpoint store {self._path} failed: {exc!r}") from exc
            raise
        self._failing = None
        self._wal.wrote(FRAMES_PER_COMMIT)

    async def _flush_loop(self) -> None:
        backoff = Backoff(RETRY_INITIAL, RETRY_MAX)
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._interval > 0:
                await asyncio.sleep(self._interval)
            else:
                await asyncio.sleep(0)  # let every shard that finished in this loop turn join the commit
            try:
                self._write()
            except RetryableError as exc:
                delay = backoff.next_delay()
                log.warning("writing checkpoints failed; retrying in %.2fs", delay,
                            extra={"pipeline": self._pipeline, "error": str(exc)})
                await asyncio.sleep(delay)
                self._wake.set()
            except CheckpointError:
                return  # latched in self._error: every later call raises it
            else:
                backoff.reset()
                if self._wal.due():  # in a thread: SQLite would run it in a commit, on the event loop
                    await asyncio.to_thread(checkpoint_file, self._path)


async def bind_local_log(source: object, store: object) -> None:
    """Refuse checkpoints made against another local log; a no-op unless both parts are local.

    Call it once both are open, before any shard starts (``Pipeline.open``, ``streamfn status``).
    """
    if isinstance(source, LocalSource) and isinstance(store, LocalCheckpointStore):
        await store.bind_log(source.log_id, source.tips())
