"""Per-shard counters, updated once per batch so that counting stays off the per-record path.

The metrics endpoint and ``streamfn status`` read these; the engine never reads them back.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Literal

from ..records import Position

#: What a durable write went to: the failure counters and the blocked cause are labelled with it.
WriteTarget = Literal["sink", "checkpoint store", "destination"]

#: Upper bounds (seconds) of the handler-duration histogram; one more bucket holds the rest.
HANDLER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Upper bounds (seconds) of the append-to-done histogram: from a record's arrival to its checkpoint.
DONE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class ShardStats:
    """What one shard runner has done so far, and what it is doing now."""

    __slots__ = (
        "attempt",
        "batches",
        "behind_ms",
        "blocked_cause",
        "blocked_since",
        "calls_due",
        "checkpoint_at",
        "done_buckets",
        "done_records",
        "done_seconds",
        "failed",
        "filtered",
        "handled",
        "handler_buckets",
        "handler_calls",
        "handler_seconds",
        "last_error",
        "read",
        "retries",
        "sent_to_destination",
        "shard_id",
        "sink_seconds",
        "trimmed",
        "write_errors",
        "writes_in_flight",
    )

    def __init__(self, shard_id: str) -> None:
        self.shard_id = shard_id
        self.read = 0
        self.filtered = 0
        self.handled = 0
        self.failed = 0
        self.sent_to_destination = 0
        self.batches = 0
        self.retries = 0
        self.attempt = 0
        self.handler_seconds = 0.0
        self.handler_calls = 0
        self.handler_buckets = [0] * (len(HANDLER_BUCKETS) + 1)
        self.sink_seconds = 0.0
        #: Append-to-done latency of handled records (see observe_done).
        self.done_buckets = [0] * (len(DONE_BUCKETS) + 1)
        self.done_records = 0
        self.done_seconds = 0.0
        self.behind_ms: float | None = None
        #: The checkpoint as the engine last moved it: a Position (spelled only when read: moving it
        #: is per batch, reading it per scrape), "SHARD_END", or None. Read it as :attr:`checkpoint`.
        self.checkpoint_at: Position | str | None = None
        self.blocked_since: float | None = None
        #: Why the shard is blocked: "handler", "handler stuck", "source", or a write target.
        self.blocked_cause: str | None = None
        #: Failed writes by (target, kind of failure).
        self.write_errors: dict[tuple[str, str], int] = {}
        #: Start times (monotonic) of the durable writes in flight now, by a token of each.
        self.writes_in_flight: dict[int, float] = {}
        #: Handler calls in flight now: by lane, the time (monotonic) by which each should have ended.
        #: One past it holds its lane (an async handler that swallows its cancellation).
        self.calls_due: dict[int, float] = {}
        #: Records the source's retention removed before this shard read them.
        self.trimmed = 0
        self.last_error: str | None = None

    def restart(self) -> None:
        """The shard starts again in this process (its lease came back): what it is doing now starts
        afresh, while its counters go on, as a Prometheus counter must (only a new process resets it)."""
        self.attempt = 0
        self.behind_ms = None
        self.checkpoint_at = None
        self.blocked_since = None
        self.blocked_cause = None
        self.last_error = None

    @property
    def checkpoint(self) -> str | None:
        """The checkpoint as text ("12", "12:3", "SHARD_END"), or None before the first."""
        at = self.checkpoint_at
        return at if at is None or isinstance(at, str) else str(at)

    @checkpoint.setter
    def checkpoint(self, text: str | None) -> None:
        self.checkpoint_at = text

    def observe_handler(self, seconds: float) -> None:
        """Count one handler call that took ``seconds`` (the histogram the metrics endpoint shows)."""
        self.handler_seconds += seconds
        self.handler_calls += 1
        self.handler_buckets[bisect_left(HANDLER_BUCKETS, seconds)] += 1

    def observe_done(self, oldest_arrival: float, records: int) -> None:
        """A batch of ``records`` is checkpointed: each counts with the age of the batch's first (oldest)
        record (an upper bound for all of them, exact for one), so that the cost stays per batch, not per record."""
        if oldest_arrival <= 0:
            return  # a source that gave no arrival time
        seconds = time.time() - oldest_arrival
        if seconds < 0.0:  # the clock stepped back
            seconds = 0.0
        self.done_records += records
        self.done_seconds += seconds * records
        self.done_buckets[bisect_left(DONE_BUCKETS, seconds)] += records

    def mark_blocked(self, cause: str, error: str, since: float | None = None) -> None:
        """The shard is retrying instead of moving on (a failing call, write or read), since ``since``
        (monotonic; now by default: a failed write counts from its start)."""
        if self.blocked_since is None:
            self.blocked_since = time.monotonic() if since is None else since
        self.blocked_cause = cause
        self.last_error = error

    def mark_unblocked(self, cause: str | None = None) -> None:
        """Moving again; with ``cause``, only if that is what blocked the shard."""
        if cause is None or self.blocked_cause == cause:
            self.blocked_since = None
            self.blocked_cause = None

    def count_write_error(self, target: str, kind: str) -> None:
        key = (target, kind)
        self.write_errors[key] = self.write_errors.get(key, 0) + 1

    def blocked_for(self) -> float:
        """Seconds this shard has been unable to move on: retrying the same records, or waiting on a
        write still in flight (a hung endpoint blocks before its first failure). 0 when moving."""
        now = time.monotonic()
        since = self.blocked_since
        if self.writes_in_flight:
            oldest = min(self.writes_in_flight.values())
            since = oldest if since is None else min(since, oldest)
        overdue = self._overdue_since(now)
        if overdue is not None:
            since = overdue if since is None else min(since, overdue)
        return 0.0 if since is None else now - since

    def _overdue_since(self, now: float) -> float | None:
        due = [deadline for deadline in self.calls_due.values() if deadline <= now]
        return min(due) if due else None

    def is_blocked(self, stalled_after: float) -> bool:
        """Blocked now: retrying, a handler call past its timeout still running, or a write in flight
        longer than ``stalled_after`` seconds."""
        if self.blocked_since is not None:
            return True
        now = time.monotonic()
        if self._overdue_since(now) is not None:
            return True
        return bool(self.writes_in_flight) and now - min(self.writes_in_flight.values()) > stalled_after
