"""One watcher of a local log's shard tips for all readers of a stream, instead of one poll per shard.

Idle shards used to poll their tip each with a back-off (~30k lookups/s at 1,024 shards, a
quarter of a core) and noticed a record up to 50 ms late. The watcher asks SQLite one cheap
question on a connection of its own, ``PRAGMA data_version`` (it changes whenever another
connection committed, in this process or another), and only when it changed reads every tip of
the stream in one query and wakes the readers whose shard moved.

When to ask: at once after an append through the same ``LocalLog`` (it tells its listeners);
on Linux, when inotify reports a write to the log's files (another process appended), plus a
slow safety check; elsewhere every ``interval``. Idle shards then cost nothing (a timer wakeup
alone costs ~40 us of CPU on a busy 2-core VM: 2 ms polling would be 2 % of a core).

Before it wakes the readers of the shards that moved, the watcher reads their new blocks in one
query into the log's read cache (``LocalLog.cache_next_blocks``): a commit that wakes 16 shards
costs one block query, not 16.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading

try:  # Linux only: elsewhere the watcher polls
    from inotify_simple import INotify, flags
except ImportError:  # pragma: no cover - not Linux
    INotify = None

from ...errors import StreamfnError
from .log import LocalLog

log = logging.getLogger("streamfn.source.local")

#: Seconds between two ``data_version`` checks without inotify: the most a record from another
#: process waits before its shard wakes.
TIP_INTERVAL = 0.002
#: Seconds after a write event to look again: the event comes with the write of the WAL frames,
#: before the commit is visible, so the look at the event itself may see nothing new yet.
FOLLOW_UPS = (0.0005, 0.002, 0.005, 0.02)
#: With inotify: seconds between safety checks (a write inotify cannot see, e.g. on a network disk).
SAFETY_INTERVAL = 1.0
#: Reading the new blocks of the shards a commit woke in one query stops being worth it past this
#: many new blocks per woken shard (the shards are then behind, or others are busy): they read their own.
CACHE_BLOCKS_PER_SHARD = 4
#: Seconds between attempts while the log cannot be read (disk fault...); readers then look themselves.
RETRY_INTERVAL = 1.0


class TipWatcher:
    """The tips (newest sequences) of one stream's shards, kept current; readers wait on it."""

    def __init__(self, log: LocalLog, stream: str, shard_count: int, *, interval: float = TIP_INTERVAL) -> None:
        self.log = log
        self.path = log.path
        self.stream = stream
        self.interval = interval
        self.tips = [0] * shard_count
        #: False while the watcher cannot read the log: readers look up their tip themselves.
        self.healthy = False
        #: Per waiting shard (one reader each): its wake-up, and the sequence it has read through.
        self._waiters: dict[int, tuple[asyncio.Future[None], int]] = {}
        #: The newest block (rowid) the last look saw: blocks after it are new (``_advance``).
        self._block_mark = 0
        self._conn: sqlite3.Connection | None = None
        self._version = -1
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._inotify: INotify | None = None
        self._follow_ups: list[asyncio.TimerHandle] = []

    async def start(self) -> None:
        """Read every tip now, then keep them current in a task until :meth:`stop`."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.log.add_listener(self._appended)
        with contextlib.suppress(sqlite3.Error):
            self._refresh()
        with contextlib.suppress(StreamfnError):
            self._block_mark = self.log.newest_block()
        self._watch_files()
        self._task = asyncio.create_task(self._run(), name=f"tips:{self.stream}")

    def _watch_files(self) -> None:
        """Have the kernel say when another process writes the log (its WAL): no polling then."""
        if INotify is None or self._loop is None:
            return
        try:
            inotify = INotify(nonblocking=True)
        except OSError:  # out of inotify instances: poll instead
            return
        try:
            inotify.add_watch(self.path.parent, flags.MODIFY | flags.CREATE | flags.MOVED_TO)
            self._loop.add_reader(inotify.fileno(), self._files_changed)
        except (OSError, NotImplementedError):
            inotify.close()
            return
        self._inotify = inotify

    def _files_changed(self) -> None:
        assert self._inotify is not None
        name = self.path.name
        try:
            events = self._inotify.read(timeout=0)
        except BlockingIOError:
            return
        if any(event.name.startswith(name) for event in events):
            self._look()
            if not self._follow_ups and self._loop is not None:
                *early, last = FOLLOW_UPS
                self._follow_ups = [self._loop.call_later(delay, self._look) for delay in early]
                self._follow_ups.append(self._loop.call_later(last, self._last_look))

    def _look(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # the task's next check reports it
            self._refresh()

    def _last_look(self) -> None:
        self._follow_ups = []
        self._look()

    async def stop(self) -> None:
        self.log.remove_listener(self._appended)
        for handle in self._follow_ups:
            handle.cancel()
        self._follow_ups = []
        if self._inotify is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._inotify.fileno())
            self._inotify.close()
            self._inotify = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._wake_all()
        self._waiters.clear()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.healthy = False

    async def wait(self, shard: int, after: int, at_most: float) -> None:
        """Return once ``shard``'s tip is past ``after`` or ``at_most`` seconds passed (whichever first)."""
        if self.tips[shard] > after or at_most <= 0:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters[shard] = (waiter, after)
        timer = loop.call_later(at_most, _settle, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            if self._waiters.get(shard, (None,))[0] is waiter:
                del self._waiters[shard]

    async def _run(self) -> None:
        while True:
            try:
                while True:
                    self._refresh()
                    await asyncio.sleep(self.interval if self._inotify is None else SAFETY_INTERVAL)
            except sqlite3.Error as exc:
                if self.healthy:
                    log.warning("cannot watch the local log's tips; shards look up their own until it works again",
                                extra={"stream": self.stream, "path": str(self.path), "error": repr(exc)})
                self.healthy = False
                self._wake_all()  # readers fall back to their own lookups
                if self._conn is not None:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.close()
                    self._conn = None
                await asyncio.sleep(RETRY_INTERVAL)

    def _refresh(self) -> None:
        """Re-read the tips if anything committed since the last look; wake the shards that moved."""
        conn = self._conn
        if conn is None:
            conn = self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._version = -1
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._version:
            return
        rows = conn.execute("SELECT shard, last_seq FROM shards WHERE stream = ?", (self.stream,)).fetchall()
        self._version = version
        self.healthy = True
        self._advance(dict(rows))

    def _appended(self, stream: str, tips: dict[int, int]) -> None:
        """An append through our LocalLog committed (in any thread): wake its shards now, no poll needed."""
        if stream != self.stream:
            return
        if threading.get_ident() == self._loop_thread:
            self._advance(tips)
        elif self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._advance, tips)

    def _advance(self, moved: dict[int, int]) -> None:
        """Tips only grow (sequences never restart); wake the readers whose shard moved, their new
        blocks read first in one query for all of them (``LocalLog.cache_next_blocks``)."""
        tips, waiters = self.tips, self._waiters
        woken: dict[int, int] = {}  # shard: the sequence its reader reads next
        for shard, last_seq in moved.items():
            if shard < len(tips) and last_seq > tips[shard]:
                tips[shard] = last_seq
                waiting = waiters.get(shard)
                if waiting is not None and not waiting[0].done():
                    woken[shard] = waiting[1] + 1
        if not woken:
            return
        self._block_mark = self.log.cache_next_blocks(
            self.stream, self._block_mark, woken, CACHE_BLOCKS_PER_SHARD * len(woken))
        for shard in woken:
            waiters[shard][0].set_result(None)

    def _wake_all(self) -> None:
        for waiter, _ in self._waiters.values():
            if not waiter.done():
                waiter.set_result(None)


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
