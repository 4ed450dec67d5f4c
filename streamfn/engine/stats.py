"""Per-shard counters, updated once per batch so that counting stays off the per-record path.

The metrics endpoint and ``streamfn status`` read these; the engine never reads them back.
"""

from __future__ import annotations

import time
from bisect import bisect_left

#: Upper bounds (seconds) of the handler-duration histogram; one more bucket holds the rest.
HANDLER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ShardStats:
    """What one shard runner has done so far, and what it is doing now."""

    __slots__ = (
        "attempt",
        "batches",
        "behind_ms",
        "blocked_since",
        "checkpoint",
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
        "started",
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
        self.behind_ms: float | None = None
        self.checkpoint: str | None = None
        self.blocked_since: float | None = None
        self.last_error: str | None = None
        self.started = time.time()

    def observe_handler(self, seconds: float) -> None:
        """Count one handler call that took ``seconds`` (the histogram the metrics endpoint shows)."""
        self.handler_seconds += seconds
        self.handler_calls += 1
        self.handler_buckets[bisect_left(HANDLER_BUCKETS, seconds)] += 1

    def blocked_for(self) -> float:
        """Seconds this shard has been retrying the same records (0 when it is not)."""
        return 0.0 if self.blocked_since is None else time.monotonic() - self.blocked_since
