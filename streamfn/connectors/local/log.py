"""The embedded sharded log: named streams of N shards in one SQLite file, stored in blocks.

Layout. Each ``append`` writes, per shard, one row per chunk of at most
``BLOCK_RECORDS`` records / ``BLOCK_BYTES`` bytes::

    blocks(stream, shard, first_seq, last_seq, arrival, payload)

``payload`` is msgpack of ``[partition_keys, data, ends, lines]`` (layout 2): the records' data
back to back with a newline between two, ``ends`` each record's end offset in it (uint32,
little-endian) and ``lines`` whether every record is one non-blank line, so a reader hands out
the data without a ``bytes`` per record and ``batch.json()`` decodes a block's run of records in
one call straight from the stored buffer. Blocks of layout 1 (``[partition_keys, datas]``) are
still read. Every record of an appended block shares the block's ``arrival`` (a block is one
append's chunk). An index on ``(stream, shard, last_seq)`` makes "first block with last_seq > X"
one lookup, and a read that starts inside a block cuts the decoded columns. One row per record
would cost a B-tree entry and a Python row tuple per record; blocks amortise both over ~1000 records.

Compaction (layout 3). A producer spreading its appends over many shards leaves each shard a
block per append of a few records, and reading a shard then costs a row, a page and a decode per
few records (1,024 shards, 10,000-record appends: ~10 records a block, reads ~2x the CPU of
~100-record blocks). So an append that leaves ``MERGE_BLOCKS`` small blocks (each under
``SMALL_BLOCK_BYTES``) at the end of a shard merges them into one, in a transaction of its own
once its records are committed and their readers woken (a merge never delays a record): a
reader sees the small blocks or the merged one, never both, and a block it holds decoded stays
right (the merged block holds the same records under the same sequences). A merged block's
payload has a fifth element, its arrivals as ``[[count, arrival], ...]`` runs, so every record
keeps its own arrival time; its row's ``arrival`` is the newest (retention keeps a block while
any of its records is kept). Each record is rewritten a few times at most (a merged block under
the size is merged again), and only while blocks are small.

``shards(stream, shard, last_seq, last_arrival)`` keeps each shard's tip, so sequences
never restart after ``trim`` and arrival times never go backwards within a shard.

Identity. ``meta`` holds a random ``log_id`` chosen when the file is created (or first opened
by a release that knows it): checkpoints record it, so a recreated log is never read with
another log's checkpoints. ``PRAGMA user_version`` is the layout version (0: before ``meta``).

Retention. ``trim`` drops whole blocks older than an age or beyond a size, oldest first, as
Kinesis trims by retention period; sequences continue, and readers count what they missed.

Storage faults. A full, read-only or failing disk raises ``RetryableError(kind="storage")``
and leaves the file as it was: the failed transaction is rolled back, nothing half-written.

Durability. WAL journal with ``synchronous=NORMAL``: a committed append survives a
``kill -9`` of any process (the WAL is in the OS page cache); it may not survive a power
loss or kernel crash, which needs ``synchronous=FULL``. Readers in other processes see
commits as they happen and never block the writer.
"""

from __future__ import annotations

import array
import contextlib
import hashlib
import itertools
import logging
import operator
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from ...errors import SourceError, StreamfnError
from ...records import Batch, DataColumn, LazyColumn
from ...storage_errors import is_transient, storage_error, storage_faults
from .wal import WalCount, checkpoint, quiet_commits

log = logging.getLogger("streamfn.source.local")

#: Told ``(stream, {shard index: new tip})`` after each append through a LocalLog commits.
AppendListener = Callable[[str, dict[int, int]], None]

BLOCK_RECORDS = 1000
BLOCK_BYTES = 1 << 20
BUSY_TIMEOUT_MS = 10_000
PAGE_SIZE = 16384
# Reading blocks through mmap skips one copy per page; measured ~2x faster block fetches.
MMAP_BYTES = 256 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    name TEXT PRIMARY KEY,
    shard_count INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS shards (
    stream TEXT NOT NULL,
    shard INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    last_arrival REAL NOT NULL,
    PRIMARY KEY (stream, shard)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blocks (
    stream TEXT NOT NULL,
    shard INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    arrival REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS blocks_by_seq ON blocks (stream, shard, last_seq);
CREATE INDEX IF NOT EXISTS blocks_by_arrival ON blocks (stream, shard, arrival, last_seq);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""
#: Frames an ordinary commit writes (the table's and both indexes' leaves it touches), for ``WalCount``.
FRAMES_PER_COMMIT = 8
#: The layout this code writes (``PRAGMA user_version``); 0 is the layout before ``meta``, 1 the
#: one before blocks kept their data as one buffer, 2 the one before merged blocks (which keep
#: their records' arrivals). A log is upgraded in place by opening it: older blocks stay as they
#: are and are still read; an older release then refuses the file.
LAYOUT_VERSION = 3
#: Compaction: this many blocks under this size at the end of a shard are merged into one.
MERGE_BLOCKS = 8
SMALL_BLOCK_BYTES = 16 << 10
#: An append that touches at least 1/LOOK_AT_ALL_SHARDS of a stream's shards reads every shard's
#: tip in one query rather than one query per shard.
LOOK_AT_ALL_SHARDS = 8


class Retention(msgspec.Struct, frozen=True):
    """How much of a stream the log keeps; None is no limit of that kind.

    ``max_age`` (seconds) drops blocks whose records all arrived longer ago; ``max_shard_bytes``
    and ``max_stream_bytes`` drop the oldest blocks of a shard / of the whole stream until the
    stored payloads fit. Whole blocks only: a block is kept while any of its records is kept.
    """

    max_age: float | None = 24 * 3600.0
    max_shard_bytes: int | None = None
    max_stream_bytes: int | None = None

    @property
    def unlimited(self) -> bool:
        return self.max_age is None and self.max_shard_bytes is None and self.max_stream_bytes is None


class TrimmedRange(NamedTuple):
    """Sequences ``first..last`` of one shard that a trim removed."""

    shard_id: str
    first: int
    last: int

    @property
    def records(self) -> int:
        return self.last - self.first + 1


def shard_id_of(index: int) -> str:
    """The public id of shard number ``index``: ``shard-0000``."""
    return f"shard-{index:04d}"


def shard_index_of(shard_id: str) -> int:
    """The shard number behind a ``shard-NNNN`` id."""
    prefix, _, number = shard_id.partition("-")
    if prefix != "shard" or not number.isdigit():
        raise SourceError(f"not a local log shard id: {shard_id!r}")
    return int(number)


def shard_for_key(partition_key: str, shard_count: int) -> int:
    """The shard a key routes to: MD5 of the key as a 128-bit int, split in even ranges.

    The same rule as Kinesis' hash key ranges, and stable across processes and runs.
    """
    digest = hashlib.md5(partition_key.encode(), usedforsecurity=False).digest()
    return (int.from_bytes(digest, "big") * shard_count) >> 128


class LocalLog:
    """Synchronous access to one log file. Safe to share between threads (one connection each)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._encode = msgspec.msgpack.Encoder().encode
        self._shard_counts: dict[str, int] = {}
        # Per shard, the last block a read stopped inside of: a reader taking 100 records at a
        # time then decodes each 1000-record block once, not ten times. A block kept here stays
        # right: blocks never change, and a merge keeps their records under the same sequences.
        self._partial: dict[tuple[str, int], _Block] = {}
        self._listeners: list[AppendListener] = []
        #: Trims through this object that removed blocks: what was seen of a shard's oldest
        #: retained sequence before one is out of date.
        self.trims = 0
        #: Per (stream, shard): small blocks at the shard's end as this object last knew it (counted
        #: at its first append to the shard), so an append looks for blocks to merge only once there
        #: may be enough (a hint: appends by other objects or processes make it low; the look decides).
        self._small_tail: dict[tuple[str, int], int] = {}
        self._wal = WalCount()
        try:
            with storage_faults(self.path, "opening the local log"):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.log_id = self._set_up(self._conn())
        except BaseException:
            self.close()
            raise

    def _set_up(self, conn: sqlite3.Connection) -> str:
        """Create or upgrade the layout; the log's id (chosen now if the file has none yet)."""
        # Before the first table exists: big pages keep a ~250 KB block on a short overflow chain.
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=WAL")
        with self._transaction(conn):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > LAYOUT_VERSION:
                raise SourceError(f"{self.path} was written by a newer streamfn (layout {version}); upgrade streamfn")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            # A log from before identities gets one now: checkpoints made against it adopt it.
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('log_id', ?)", (uuid.uuid4().hex,))
            if version < LAYOUT_VERSION:
                conn.execute(f"PRAGMA user_version={LAYOUT_VERSION}")
            return str(conn.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()[0])

    # -- connections -------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise SourceError(f"local log {self.path} is closed")
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
            quiet_commits(conn)  # appends checkpoint after their commit (``wal``)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @staticmethod
    @contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """A write transaction taken up front, so concurrent writers queue on busy_timeout.

        A failed COMMIT (disk full, I/O error) may leave the transaction open or may already
        have rolled it back: either way it ends rolled back, and the connection stays usable.
        """
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close every connection this object opened, in any thread."""
        with self._lock:
            self._closed = True
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    # -- streams -----------------------------------------------------------------------

    def create_stream(self, name: str, shards: int) -> None:
        """Create ``name`` with ``shards`` shards; a no-op if it exists with the same count."""
        if shards < 1:
            raise SourceError(f"stream {name!r}: shards must be >= 1, got {shards}")
        conn = self._conn()
        with storage_faults(self.path, f"creating stream {name!r}"), self._transaction(conn):
            row = conn.execute("SELECT shard_count FROM streams WHERE name = ?", (name,)).fetchone()
            if row is not None:
                if row[0] != shards:
                    raise SourceError(f"stream {name!r} exists in {self.path} with {row[0]} shards, not {shards}")
                return
            conn.execute("INSERT INTO streams VALUES (?, ?, ?)", (name, shards, time.time()))
            conn.executemany("INSERT INTO shards VALUES (?, ?, 0, 0.0)", [(name, i) for i in range(shards)])

    def streams(self) -> dict[str, int]:
        """Every stream and its shard count."""
        with storage_faults(self.path, "listing streams"):
            return dict(self._conn().execute("SELECT name, shard_count FROM streams ORDER BY name"))

    def shard_count(self, stream: str) -> int:
        count = self._shard_counts.get(stream)
        if count is None:
            with storage_faults(self.path, f"reading stream {stream!r}"):
                row = self._conn().execute("SELECT shard_count FROM streams WHERE name = ?", (stream,)).fetchone()
            if row is None:
                raise SourceError(f"no stream {stream!r} in {self.path}")
            count = self._shard_counts[stream] = int(row[0])
        return count

    def shard_ids(self, stream: str) -> list[str]:
        return [shard_id_of(i) for i in range(self.shard_count(stream))]

    # -- writing -----------------------------------------------------------------------

    def append(self, stream: str, records: Iterable[tuple[str, bytes]], arrival_time: float | None = None) -> int:
        """Append ``(partition_key, data)`` pairs in one transaction; returns how many.

        Once this returns, every record is committed and will be readable after a crash. On
        a ``RetryableError`` (disk full...) nothing of the call was appended: append it again.
        ``arrival_time`` (epoch seconds) replaces "now", e.g. when importing history; arrival
        times still never go backwards within a shard.
        """
        shard_count = self.shard_count(stream)
        keys: list[list[str]] = [[] for _ in range(shard_count)]
        datas: list[list[bytes]] = [[] for _ in range(shard_count)]
        total = 0
        for key, data in records:
            shard = shard_for_key(key, shard_count) if shard_count > 1 else 0
            keys[shard].append(key)
            datas[shard].append(data)
            total += 1
        if not total:
            return 0
        conn = self._conn()
        small: dict[tuple[str, int], int] = {}
        with storage_faults(self.path, f"appending to stream {stream!r}"), self._transaction(conn):
            now = time.time() if arrival_time is None else arrival_time
            tips = self._append_shards(conn, stream, keys, datas, now, small)
        self._small_tail.update(small)  # once committed
        for listener in self._listeners:
            listener(stream, tips)
        due = [shard for (_, shard), count in small.items() if count >= MERGE_BLOCKS]
        if due:  # after the commit and the wake-ups: readers never wait on a merge
            self._merge_tails(conn, stream, due)
        if self._wal.due():  # after the commit, the wake-ups and the merges (``wal``)
            checkpoint(conn, self.path)
        return total

    def _merge_tails(self, conn: sqlite3.Connection, stream: str, shards: list[int]) -> None:
        """Merge the small blocks at the end of ``shards`` in one transaction of its own. Only an
        optimisation: if it fails (a busy or full disk; a stored block that does not decode, which
        its readers report), the blocks stay as they are, the append it follows has committed
        regardless (raising from it would have its caller append the records again), and a later
        append tries again."""
        merged: dict[tuple[str, int], int] = {}
        try:
            with self._transaction(conn):
                for shard in shards:
                    # Merging is Python work under the GIL: a thread waiting for it (a pipeline's
                    # event loop in this process, just woken by this append) goes first.
                    time.sleep(0)
                    merged[(stream, shard)] = self._merge_tail(conn, stream, shard)
        except (sqlite3.Error, ValueError) as exc:
            log.debug("merging small blocks failed; they stay as they are",
                      extra={"path": str(self.path), "stream": stream, "error": repr(exc)})
            return
        self._small_tail.update(merged)
        self._wal.wrote(FRAMES_PER_COMMIT + len(shards))

    def add_listener(self, listener: AppendListener) -> None:
        """Call ``listener(stream, {shard: new tip})`` after each commit of ``append`` through this
        object (in the appending thread): in-process readers then wake without polling."""
        self._listeners.append(listener)

    def remove_listener(self, listener: AppendListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def _append_shards(
        self,
        conn: sqlite3.Connection,
        stream: str,
        keys: list[list[str]],
        datas: list[list[bytes]],
        now: float,
        small: dict[tuple[str, int], int],
    ) -> dict[int, int]:
        """Append each shard's records as blocks (inside the caller's transaction); the new tips.
        ``small`` gets each shard's new count of small blocks at its end (``_small_tail``: merged
        by ``append`` once enough).

        All shards' blocks go in one INSERT statement and their tips in one UPDATE: statements
        per shard were most of the cost of a small append over many shards, and an append's
        records wait for its commit."""
        blocks: list[tuple[str, int, int, int, float, bytes]] = []
        stored = 0  # payload bytes, for the WAL count
        moved: list[tuple[int, float, str, int]] = []
        tips: dict[int, int] = {}
        small_ends: dict[int, tuple[int, bool]] = {}  # shard: (small blocks ending this append, all small)
        touched = [shard for shard, shard_keys in enumerate(keys) if shard_keys]
        known: dict[int, tuple[int, float]] | None = None
        if len(touched) > 1 and len(touched) * LOOK_AT_ALL_SHARDS >= len(keys):  # one query, not one per shard
            known = {shard: (last_seq, last_arrival) for shard, last_seq, last_arrival in conn.execute(
                "SELECT shard, last_seq, last_arrival FROM shards WHERE stream = ?", (stream,))}
        for shard in touched:
            shard_keys, shard_datas = keys[shard], datas[shard]
            last_seq, last_arrival = known[shard] if known is not None else conn.execute(
                "SELECT last_seq, last_arrival FROM shards WHERE stream = ? AND shard = ?", (stream, shard)
            ).fetchone()
            arrival = max(now, last_arrival)  # a clock step back must not reorder arrivals
            seq = last_seq
            sizes = []
            for start, end in _chunks(shard_datas):
                payload = self._encode(_block_payload(shard_keys[start:end], shard_datas[start:end]))
                blocks.append((stream, shard, seq + 1, seq + end - start, arrival, payload))
                sizes.append(len(payload))
                stored += len(payload)
                seq += end - start
            moved.append((seq, arrival, stream, shard))
            tips[shard] = int(seq)
            trailing = len(list(itertools.takewhile(lambda size: size < SMALL_BLOCK_BYTES, reversed(sizes))))
            small_ends[shard] = (trailing, trailing == len(sizes))
        conn.executemany("INSERT INTO blocks VALUES (?, ?, ?, ?, ?, ?)", blocks)
        conn.executemany("UPDATE shards SET last_seq = ?, last_arrival = ? WHERE stream = ? AND shard = ?", moved)
        self._wal.wrote(FRAMES_PER_COMMIT + stored // PAGE_SIZE)  # (a commit that then fails: an early checkpoint)
        for shard, (trailing, all_small) in small_ends.items():
            count = trailing
            if all_small:
                hint = self._small_tail.get((stream, shard))
                # First append to this shard through this object (a producer may open the log per
                # append): the look counts the small blocks at its end, these rows included.
                count = self._count_small_tail(conn, stream, shard) if hint is None else trailing + hint
            small[(stream, shard)] = count
        return tips

    @staticmethod
    def _count_small_tail(conn: sqlite3.Connection, stream: str, shard: int) -> int:
        """How many blocks under ``SMALL_BLOCK_BYTES`` end the shard (up to ``MERGE_BLOCKS``)."""
        sizes = conn.execute(
            "SELECT length(payload) FROM blocks WHERE stream = ? AND shard = ? ORDER BY last_seq DESC LIMIT ?",
            (stream, shard, MERGE_BLOCKS),
        ).fetchall()
        return len(list(itertools.takewhile(lambda row: row[0] < SMALL_BLOCK_BYTES, sizes)))

    def _merge_tail(self, conn: sqlite3.Connection, stream: str, shard: int) -> int:
        """Merge the shard's last ``MERGE_BLOCKS`` blocks into one if each is small and together
        they fit a block (inside the caller's transaction); how many small blocks end it then
        (the look decides: the count it was called on is a hint).

        The newest block's row becomes the merged block (its last sequence and arrival are the
        merged block's): the others are deleted, no index entry of it changes.
        """
        tail = conn.execute(
            "SELECT rowid, first_seq, last_seq, length(payload) FROM blocks WHERE stream = ? AND shard = ?"
            " ORDER BY last_seq DESC LIMIT ?",
            (stream, shard, MERGE_BLOCKS),
        ).fetchall()
        small = len(list(itertools.takewhile(lambda row: row[3] < SMALL_BLOCK_BYTES, tail)))
        if (small < MERGE_BLOCKS or sum(size for *_, size in tail) > BLOCK_BYTES
                or tail[0][2] - tail[-1][1] >= BLOCK_RECORDS
                or any(newer[1] != older[2] + 1 for newer, older in itertools.pairwise(tail))):
            # Too many records together (or a gap, which a trim never leaves): these stay as they are.
            return 0 if small == MERGE_BLOCKS else small
        rowids = [row[0] for row in reversed(tail)]
        marks = ",".join("?" * len(rowids))
        rows = conn.execute(
            f"SELECT first_seq, arrival, payload FROM blocks WHERE rowid IN ({marks}) ORDER BY last_seq", rowids)
        blocks = [_decode_block(first_seq, arrival, payload, for_reading=False) for first_seq, arrival, payload in rows]
        payload = self._encode(_merged_payload(blocks))
        conn.execute(f"DELETE FROM blocks WHERE rowid IN ({','.join('?' * (len(rowids) - 1))})", rowids[:-1])
        conn.execute("UPDATE blocks SET first_seq = ?, payload = ? WHERE rowid = ?",
                     (blocks[0].first_seq, payload, rowids[-1]))
        return 1 if len(payload) < SMALL_BLOCK_BYTES else 0

    def trim(self, stream: str, retention: Retention, now: float | None = None) -> list[TrimmedRange]:
        """Drop the whole blocks that ``retention`` no longer keeps; what each shard lost.

        One short transaction per shard, so a writer waits at most one shard's delete; readers
        (WAL) never wait. Sequences continue after a trim: the tip is kept in ``shards``.
        """
        if retention.unlimited:
            return []
        now = time.time() if now is None else now
        with storage_faults(self.path, f"trimming stream {stream!r}"):
            cutoffs = self._trim_cutoffs(stream, retention, now)
            trimmed = []
            for shard, cutoff in sorted(cutoffs.items()):
                conn = self._conn()
                with self._transaction(conn):
                    # What goes, as it is now: an append may have merged the cut-off block since.
                    first, last = conn.execute(
                        "SELECT min(first_seq), max(last_seq) FROM blocks WHERE stream = ? AND shard = ?"
                        " AND last_seq <= ?",
                        (stream, shard, cutoff),
                    ).fetchone()
                    if first is None:
                        continue
                    conn.execute("DELETE FROM blocks WHERE stream = ? AND shard = ? AND last_seq <= ?",
                                 (stream, shard, cutoff))
                self._partial.pop((stream, shard), None)
                self.trims += 1
                trimmed.append(TrimmedRange(shard_id_of(shard), int(first), int(last)))
                self._wal.wrote(FRAMES_PER_COMMIT)
            if self._wal.due():
                checkpoint(self._conn(), self.path)
            return trimmed

    def _trim_cutoffs(self, stream: str, retention: Retention, now: float) -> dict[int, int]:
        """Per shard, the highest ``last_seq`` of the blocks to drop (shards losing none are absent)."""
        conn = self._conn()
        cutoffs: dict[int, int] = {}

        def drop(shard: int, last_seq: int) -> None:
            cutoffs[shard] = max(cutoffs.get(shard, 0), last_seq)

        if retention.max_age is not None:
            for shard in range(self.shard_count(stream)):  # per shard, so the arrival index applies
                row = conn.execute(
                    "SELECT max(last_seq) FROM blocks WHERE stream = ? AND shard = ? AND arrival < ?",
                    (stream, shard, now - retention.max_age),
                ).fetchone()
                if row[0] is not None:
                    drop(shard, int(row[0]))
        if retention.max_shard_bytes is None and retention.max_stream_bytes is None:
            return cutoffs
        # Newest first: length() of a blob reads its header, not its pages.
        blocks = conn.execute(
            "SELECT shard, last_seq, length(payload) FROM blocks WHERE stream = ? ORDER BY arrival DESC, last_seq DESC",
            (stream,),
        ).fetchall()
        shard_bytes: dict[int, int] = {}
        stream_bytes = 0
        for shard, last_seq, size in blocks:
            shard_bytes[shard] = shard_bytes.get(shard, 0) + size
            stream_bytes += size
            if (retention.max_shard_bytes is not None and shard_bytes[shard] > retention.max_shard_bytes) or (
                retention.max_stream_bytes is not None and stream_bytes > retention.max_stream_bytes
            ):
                drop(shard, last_seq)
        return cutoffs

    # -- reading -----------------------------------------------------------------------

    def read(self, stream: str, shard_id: str, after_seq: int, max_records: int, tip: int | None = None) -> Batch:
        """Up to ``max_records`` records of one shard with sequence > ``after_seq``, in order, as a
        columnar batch: the block's decoded columns sliced, no ``Record`` built.

        Records trimmed away are skipped: the read starts at the oldest block left (a caller
        sees the gap in the sequences; see ``first_retained_seq``). ``tip``: the newest sequence
        the caller knows of; a read that reaches it from the read cache (``cache_next_blocks``)
        makes no query for more.
        """
        shard = shard_index_of(shard_id)
        if max_records <= 0:
            return Batch(shard_id, [])
        try:  # not ``with storage_faults``: a context manager costs microseconds on this hot path
            return self._read(stream, shard, shard_id, after_seq, max_records, tip)
        except sqlite3.Error as exc:
            if not is_transient(exc):
                raise
            raise storage_error(exc, self.path, f"reading {stream!r} {shard_id}") from exc

    def _read(
        self, stream: str, shard: int, shard_id: str, after_seq: int, max_records: int, tip: int | None
    ) -> Batch:
        taking = _Taking(max_records)
        cached = self._partial.get((stream, shard))
        if cached is not None:
            if cached.first_seq <= after_seq + 1 <= cached.last_seq:  # it holds the next record
                after_seq = taking.take(cached, after_seq)
            if after_seq >= cached.last_seq or after_seq + 1 < cached.first_seq:
                self._partial.pop((stream, shard), None)  # read past (or moved away): keep no block alive
            if not taking.wanted or (tip is not None and after_seq >= tip):
                return taking.batch(shard_id)
        rows = self._conn().execute(
            "SELECT first_seq, arrival, payload FROM blocks"
            " WHERE stream = ? AND shard = ? AND last_seq > ? ORDER BY last_seq",
            (stream, shard, after_seq),
        )  # iterated, not fetched: each unneeded block would cost a copy of its payload
        try:
            for first_seq, arrival, payload in rows:
                block = _decode_block(first_seq, arrival, payload)
                after_seq = taking.take(block, after_seq)
                if not taking.wanted:
                    if after_seq < block.last_seq:
                        self._partial[(stream, shard)] = block
                    break
        finally:
            rows.close()
        return taking.batch(shard_id)

    def newest_block(self) -> int:
        """The rowid of the newest block of any stream (0 for none): where ``cache_next_blocks`` starts."""
        with storage_faults(self.path, "reading the local log"):
            return int(self._conn().execute("SELECT coalesce(max(rowid), 0) FROM blocks").fetchone()[0])

    def cache_next_blocks(self, stream: str, after_block: int, next_seqs: dict[int, int], limit: int) -> int:
        """Put the blocks added since ``after_block`` (a rowid) that hold a shard's next record
        (``next_seqs``: shard index to the sequence it reads next) in the read cache, so those
        shards' next reads make no query: one query for every shard a commit woke, not one each.
        Returns the newest rowid seen, the next call's ``after_block``.

        Only an optimisation, so it never raises: a block it misses (more than ``limit`` new
        blocks, a storage fault, a rowid reused after a trim emptied the table's end) is read by
        the shard's own query, as without it. A cached block stays right: a block's records
        never change, and a merge keeps them under the same sequences.
        """
        try:
            rows = self._conn().execute(
                "SELECT rowid, stream, shard, first_seq, last_seq, arrival, payload FROM blocks"
                " WHERE rowid > ? ORDER BY rowid LIMIT ?", (after_block, limit)).fetchall()
            if len(rows) == limit or not rows:  # too many to be worth it, or rowids restarted lower
                return self.newest_block()
            for _, block_stream, shard, first_seq, last_seq, arrival, payload in rows:
                next_seq = next_seqs.get(shard)
                if block_stream == stream and next_seq is not None and first_seq <= next_seq <= last_seq:
                    self._partial[(stream, shard)] = _decode_block(first_seq, arrival, payload)
        except (sqlite3.Error, StreamfnError, msgspec.DecodeError):
            return after_block
        return int(rows[-1][0])

    def last_seq(self, stream: str, shard_id: str) -> int:
        """The newest sequence of a shard, 0 when nothing was ever appended."""
        try:  # polled while a shard is idle: no context manager here either
            row = self._conn().execute(
                "SELECT last_seq FROM shards WHERE stream = ? AND shard = ?", (stream, shard_index_of(shard_id))
            ).fetchone()
        except sqlite3.Error as exc:
            if not is_transient(exc):
                raise
            raise storage_error(exc, self.path, f"reading the tip of {stream!r} {shard_id}") from exc
        if row is None:
            raise SourceError(f"no shard {shard_id!r} in stream {stream!r} of {self.path}")
        return int(row[0])

    def first_seq_at_or_after(self, stream: str, shard_id: str, timestamp: float) -> int | None:
        """The first retained sequence that arrived at or after ``timestamp``, None if none yet."""
        with storage_faults(self.path, f"reading {stream!r} {shard_id}"):
            row = self._conn().execute(  # the block's arrival is its newest: the record is in it
                "SELECT first_seq, arrival, payload FROM blocks WHERE stream = ? AND shard = ? AND arrival >= ?"
                " ORDER BY arrival, last_seq LIMIT 1",
                (stream, shard_index_of(shard_id), timestamp),
            ).fetchone()
        if row is None:
            return None
        block = _decode_block(*row)
        seq = block.first_seq
        for count, arrival in block.runs or ():
            if arrival >= timestamp:
                break
            seq += count
        return int(seq)

    def first_retained_seq(self, stream: str, shard_id: str) -> int:
        """The oldest sequence still stored in a shard; the tip + 1 when none is (all trimmed or empty)."""
        with storage_faults(self.path, f"reading {stream!r} {shard_id}"):
            row = self._conn().execute(  # one statement: the block and the tip from one snapshot
                "SELECT coalesce((SELECT first_seq FROM blocks WHERE stream = ?1 AND shard = ?2"
                " ORDER BY last_seq LIMIT 1), (SELECT last_seq + 1 FROM shards WHERE stream = ?1 AND shard = ?2))",
                (stream, shard_index_of(shard_id)),
            ).fetchone()
        if row[0] is None:
            raise SourceError(f"no shard {shard_id!r} in stream {stream!r} of {self.path}")
        return int(row[0])

    def shard_bounds(self, stream: str) -> list[tuple[int, int]]:
        """Per shard (by index): the tip and the oldest retained sequence (the tip + 1 when none is),
        in one statement over every shard: starting 1,024 shards costs one query, not 2,048."""
        with storage_faults(self.path, f"reading the shards of {stream!r}"):
            rows = self._conn().execute(
                "SELECT shard, last_seq, coalesce((SELECT first_seq FROM blocks WHERE stream = s.stream"
                " AND shard = s.shard ORDER BY last_seq LIMIT 1), last_seq + 1) FROM shards AS s"
                " WHERE stream = ? ORDER BY shard",
                (stream,),
            ).fetchall()
        if not rows:
            raise SourceError(f"no stream {stream!r} in {self.path}")
        return [(int(tip), int(first)) for _, tip, first in rows]


class _Block(NamedTuple):
    """One stored block, decoded: its keys still encoded, its data one buffer with end offsets."""

    first_seq: int
    last_seq: int
    arrival: float
    keys: msgspec.Raw
    buffer: Any  # bytes, or a memoryview of the stored payload
    ends: Sequence[int]
    lines: bool
    #: A merged block's arrivals as ``(count, arrival)`` runs, and one per record (a read slices
    #: it); None: every record has ``arrival``.
    runs: list[tuple[int, float]] | None = None
    arrivals: list[float] | None = None


class _Taking:
    """The columns of one read, gathered block by block and made into one batch at the end: the
    per-block cost is a few appends (with many shards, blocks hold few records each)."""

    __slots__ = ("arrivals", "count", "keys", "runs", "segments", "wanted")

    def __init__(self, wanted: int) -> None:
        self.wanted = wanted
        self.count = 0
        self.segments: list[tuple[Any, Sequence[int], int, int, bool]] = []
        self.keys: list[tuple[msgspec.Raw, int, int]] = []
        self.arrivals: list[float] = []
        #: Each block's taken sequences, as (first, stop).
        self.runs: list[tuple[int, int]] = []

    def take(self, block: _Block, after_seq: int) -> int:
        """Take the block's records after ``after_seq``, up to what is still wanted; the new after."""
        first_seq = block.first_seq
        start = after_seq + 1 - first_seq if after_seq >= first_seq else 0
        end = min(block.last_seq - first_seq + 1, start + self.wanted)
        taken = end - start
        if taken > 0:
            self.runs.append((first_seq + start, first_seq + end))
            self.segments.append((block.buffer, block.ends, start, end, block.lines))
            self.keys.append((block.keys, start, end))
            if block.arrivals is None:
                self.arrivals += [block.arrival] * taken
            else:
                self.arrivals += block.arrivals[start:end]
            self.count += taken
            self.wanted -= taken
        return first_seq + end - 1

    def batch(self, shard_id: str) -> Batch:
        if not self.count:
            return Batch(shard_id, [])
        runs = self.runs
        # Consecutive blocks hold consecutive sequences (trims remove whole blocks from the front only).
        sequences: Sequence[int] = (range(runs[0][0], runs[-1][1])
                                    if all(a[1] == b[0] for a, b in itertools.pairwise(runs))
                                    else [seq for first, stop in runs for seq in range(first, stop)])
        keys = self.keys
        return Batch.from_columns(shard_id, DataColumn(self.segments, self.count), sequences,
                                  LazyColumn(lambda: _decode_key_pieces(keys), self.count), self.arrivals)


#: A block's payload. Keys stay encoded until asked for (decoding them costs more than the data);
#: the data buffer and its offsets are views of the payload, not copies.
_decode_block_v2 = msgspec.msgpack.Decoder(tuple[msgspec.Raw, memoryview, memoryview, bool]).decode
_decode_block_v3 = msgspec.msgpack.Decoder(
    tuple[msgspec.Raw, memoryview, memoryview, bool, list[tuple[int, float]]]).decode
_decode_block_v1 = msgspec.msgpack.Decoder(tuple[msgspec.Raw, list[bytes]]).decode
_decode_keys = msgspec.msgpack.Decoder(list[str]).decode
#: The first byte of a layout-2 payload: a msgpack array of four; of a merged block: of five.
_V2_HEADER = 0x94
_MERGED_HEADER = 0x95
_LITTLE_ENDIAN = sys.byteorder == "little"


def _block_payload(keys: list[str], datas: list[bytes]) -> tuple[list[str], bytes, bytes, bool]:
    """What a block stores (layout 2): keys, the data joined by newlines, the end offsets, lines."""
    buffer = b"\n".join(datas)
    # Record i ends before the newline that follows it: (sum of lengths and newlines so far) - 1.
    ends_from = itertools.accumulate(map(operator.add, map(len, datas), itertools.repeat(1)), initial=-1)
    next(ends_from)
    ends = array.array("I", ends_from)
    if not _LITTLE_ENDIAN:
        ends.byteswap()
    lines = buffer.count(b"\n") == len(datas) - 1 and all(map(bytes.strip, datas))
    return keys, buffer, ends.tobytes(), lines


def _decode_block(first_seq: int, arrival: float, payload: bytes, *, for_reading: bool = True) -> _Block:
    """A stored block, whichever layout wrote it (a layout-1 block is joined into a buffer here).
    Not ``for_reading`` (a merge): a merged block's arrivals stay as runs, no list per record."""
    buffer: bytes | memoryview
    runs = None
    if payload[0] == _V2_HEADER:
        keys, buffer, ends, lines = _decode_block_v2(payload)
    elif payload[0] == _MERGED_HEADER:
        keys, buffer, ends, lines, runs = _decode_block_v3(payload)
    else:
        keys, datas = _decode_block_v1(payload)
        _, buffer, ends_bytes, lines = _block_payload([], datas)
        ends = memoryview(ends_bytes)
    if _LITTLE_ENDIAN:
        offsets: Sequence[int] = ends.cast("I")
    else:
        swapped = array.array("I", bytes(ends))
        swapped.byteswap()
        offsets = swapped
    arrivals = None if runs is None or not for_reading else list(itertools.chain.from_iterable(
        itertools.repeat(at, count) for count, at in runs))
    return _Block(first_seq, first_seq + len(offsets) - 1, arrival, keys, buffer, offsets, lines, runs, arrivals)


def _merged_payload(blocks: list[_Block]) -> tuple[msgspec.Raw, bytes, bytes, bool, list[tuple[int, float]]]:
    """What a block merged from consecutive ``blocks`` stores: their columns joined (the keys
    still encoded), each record's arrival kept as ``(count, arrival)`` runs."""
    keys = _join_encoded_lists([block.keys for block in blocks])
    ends = array.array("I")
    runs: list[tuple[int, float]] = []
    offset = 0
    for block in blocks:
        ends.extend(end + offset for end in block.ends)
        offset += len(block.buffer) + 1
        for count, arrival in block.runs or [(len(block.ends), block.arrival)]:
            if runs and runs[-1][1] == arrival:
                runs[-1] = (runs[-1][0] + count, arrival)
            else:
                runs.append((count, arrival))
    if not _LITTLE_ENDIAN:
        ends.byteswap()
    buffer = b"\n".join(bytes(block.buffer) for block in blocks)
    return keys, buffer, ends.tobytes(), all(block.lines for block in blocks), runs


def _join_encoded_lists(lists: list[msgspec.Raw]) -> msgspec.Raw:
    """msgpack arrays joined into one without decoding their items (a merge re-encoded every key
    of the blocks it joins, and the block at a shard's end is merged again until it is big)."""
    count = 0
    items = []
    for encoded in lists:
        view = memoryview(encoded)
        head = view[0]
        if head & 0xF0 == 0x90:  # fixarray
            count, skip = count + (head & 0x0F), 1
        elif head == 0xDC:  # array 16
            count, skip = count + int.from_bytes(view[1:3], "big"), 3
        elif head == 0xDD:  # array 32
            count, skip = count + int.from_bytes(view[1:5], "big"), 5
        else:
            raise ValueError(f"not a msgpack array (first byte {head:#x})")
        items.append(view[skip:])
    if count < 0x10:
        header = bytes([0x90 | count])
    elif count < 1 << 16:
        header = b"\xdc" + count.to_bytes(2, "big")
    else:
        header = b"\xdd" + count.to_bytes(4, "big")
    return msgspec.Raw(header + b"".join(items))


def _decode_key_pieces(pieces: list[tuple[msgspec.Raw, int, int]]) -> list[str]:
    """The partition keys of a read: each block's slice of its encoded keys, decoded now."""
    if len(pieces) == 1:
        raw, start, end = pieces[0]
        return _decode_keys(raw)[start:end]
    return [key for raw, start, end in pieces for key in _decode_keys(raw)[start:end]]


def _chunks(datas: list[bytes]) -> Iterator[tuple[int, int]]:
    """``(start, end)`` ranges of at most BLOCK_RECORDS records and about BLOCK_BYTES bytes."""
    start = 0
    size = 0
    for i, data in enumerate(datas):
        if i > start and (i - start >= BLOCK_RECORDS or size + len(data) > BLOCK_BYTES):
            yield start, i
            start, size = i, 0
        size += len(data)
    if start < len(datas):
        yield start, len(datas)
