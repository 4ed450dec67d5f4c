"""The failure policy: retry until success by default, and Lambda's limits on top.

Pure decisions only (what to do after a failed call, how long to wait); the shard runner
does the I/O. Throttling of a source, sink or destination never counts as an attempt.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import msgspec

from ..backoff import Backoff
from ..records import Record, arrival_of


class FailurePolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How a shard reacts when its handler fails on a batch (all limits off by default)."""

    initial_delay: float = 0.5
    max_delay: float = 30.0
    max_attempts: int = -1
    max_record_age: float = -1.0
    bisect_on_error: bool = False

    @property
    def has_limit(self) -> bool:
        return self.max_attempts >= 0 or self.max_record_age > 0

    def attempts_exhausted(self, attempts: int) -> bool:
        """``attempts`` counts retries after the first call, as MaximumRetryAttempts does."""
        return self.max_attempts >= 0 and attempts > self.max_attempts

    def split_expired(
        self, records: Sequence[Record], now: float | None = None
    ) -> tuple[Sequence[Record], Sequence[Record]]:
        """(expired, still fresh), judged per record against its arrival time."""
        if self.max_record_age <= 0:
            return [], records
        oldest_allowed = (time.time() if now is None else now) - self.max_record_age
        if arrival_of(records, 0) >= oldest_allowed:
            return [], records  # arrival times grow along a shard: the common case costs one look
        expired = [r for r in records if r.arrival_time < oldest_allowed]
        if not expired:
            return [], records
        return expired, [r for r in records if r.arrival_time >= oldest_allowed]


def retry_backoff(policy: FailurePolicy) -> Backoff:
    """Backoff between retries of a batch or of a store write: each delay in [d/2, d], d doubling."""
    return Backoff(policy.initial_delay, policy.max_delay, floor=0.5)
