"""The one owner of a shard's progress: its checkpoint watermark over the lanes, the durable writes
that guard it (pending batch bounds, checkpoints), and the stats that show it.

Every lane reports here when it is done with records; a lane never writes the store itself. One
lane is the one-lane case of the same watermark, not a second path.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Generator

from ..protocols.checkpoint import Checkpoint, CheckpointStore
from ..records import Position
from .lanes import Watermark
from .outcomes import classify_write_error
from .policy import FailurePolicy, retry_backoff
from .stats import ShardStats, WriteTarget

log = logging.getLogger("streamfn.shard")

#: Sleeps between retries; the caller's, so that a stop request can abandon the wait.
Wait = Callable[[float], Awaitable[None]]


class ShardProgress:
    """Where a shard is, and the writes that move it (see the module docstring)."""

    def __init__(self, pipeline: str, shard_id: str, store: CheckpointStore, policy: FailurePolicy,
                 stats: ShardStats, lanes: int, position: Position | None) -> None:
        self.pipeline = pipeline
        self.shard_id = shard_id
        self.stats = stats
        self.watermark = Watermark(lanes, position)
        self._store = store
        self._policy = policy
        stats.checkpoint_at = position

    @property
    def position(self) -> Position | None:
        return self.watermark.position

    def lane_done(self, lane: int, position: Position, window_state: bytes | None, wait: Wait) -> Awaitable[None]:
        """``lane`` is done with every record up to ``position``: the write (to await) that checkpoints the
        new watermark, if it moved (with one lane it always does; a window's state may change without
        the position moving). A plain function, not a coroutine: no frame of its own per batch."""
        moved = self.watermark.lane_done(lane, position)
        if moved is None:
            return _DONE
        self.stats.checkpoint_at = moved
        checkpoint = Checkpoint(position=moved, window_state=window_state)
        if self._store.save_now(self.shard_id, checkpoint):
            return _DONE
        return self.persist(self._store.save, "checkpoint store", wait, self.shard_id, checkpoint)

    async def save(self, checkpoint: Checkpoint, wait: Wait) -> None:
        self.stats.checkpoint_at = "SHARD_END" if checkpoint.shard_end else checkpoint.position
        await self.persist(functools.partial(self._store.save, self.shard_id, checkpoint), "checkpoint store", wait)

    async def record_pending(self, first: Position, last: Position, wait: Wait) -> None:
        """Durably note that output for [first, last] may be written: a restart forms this batch again."""
        await self.persist(functools.partial(self._store.record_pending, self.shard_id, first, last),
                           "checkpoint store", wait)

    async def persist(self, write: Callable[..., Awaitable[None]], target: WriteTarget, wait: Wait,
                      *args: object) -> None:
        """Retry a durable write until it succeeds: the shard waits and shows as blocked, nothing is
        skipped. A lost lease stops the shard; output a sink refuses as it is (SinkError) goes back
        to the caller, which fails the batch through its failure policy. ``write(*args)`` is called
        for each attempt (arguments rather than a partial: one allocation less per batch). While
        an attempt runs it is in ``stats.writes_in_flight`` (a hung write shows as blocked)."""
        stats = self.stats
        in_flight = stats.writes_in_flight
        backoff = None  # made on the first failure: a write that works first time costs no more
        while True:
            token = next(_tokens)
            in_flight[token] = started = time.monotonic()
            try:
                await write(*args)
            except Exception as exc:
                error = exc
            else:
                if backoff is not None:
                    stats.mark_unblocked(target)
                return
            finally:
                del in_flight[token]
            failure = classify_write_error(error)
            if failure.action == "stop":
                raise error
            stats.count_write_error(target, failure.kind)
            if failure.action == "fail_batch" and target == "sink":
                raise error
            stats.retries += 1
            # Blocked since the failed write began: a hung endpoint counts from its first second.
            stats.mark_blocked(target, f"{target} write failed ({failure.kind}): {error!r}", since=started)
            if backoff is None:
                backoff = retry_backoff(self._policy)
            delay = backoff.next_delay()
            log.warning(
                "write to %s failed (%s); retrying in %.2fs", target, failure.kind, delay,
                extra={"pipeline": self.pipeline, "shard": self.shard_id, "error": repr(error)},
            )
            await wait(delay)


#: Keys of the writes in flight (``ShardStats.writes_in_flight``).
_tokens = itertools.count()


class _Done:
    """A write that is already done (the watermark did not move, or the store took the checkpoint
    at once): awaiting it runs nothing."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        return
        yield


_DONE = _Done()
