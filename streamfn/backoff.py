"""Exponential backoff with full jitter, shared by connectors and the engine.

Full jitter (a delay drawn from ``[0, ceiling]``) spreads the retries of many shards that were
throttled at the same moment, which is what AWS recommends for its per-shard read limits.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays that grow by ``multiplier`` from ``initial`` up to ``maximum``; ``reset`` after a success."""

    __slots__ = ("_failures", "floor", "initial", "maximum", "multiplier")

    def __init__(self, initial: float, maximum: float, multiplier: float = 2.0, *, floor: float = 0.0) -> None:
        """``floor`` (0-1) is the least fraction of the ceiling a delay may be: 0 is full jitter,
        0.5 "equal jitter" (the engine's choice for handler retries: never hammer at once)."""
        if initial <= 0 or maximum < initial or multiplier < 1.0 or not 0.0 <= floor <= 1.0:
            raise ValueError("need 0 < initial <= maximum, multiplier >= 1 and 0 <= floor <= 1")
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self.floor = floor
        self._failures = 0

    @property
    def failures(self) -> int:
        """Delays handed out since the last reset."""
        return self._failures

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return min(self.maximum, self.initial * self.multiplier ** min(self._failures, 64))

    def next_delay(self) -> float:
        """A delay in ``[floor * ceiling, ceiling]``; the ceiling grows with each call."""
        ceiling = self.ceiling()
        self._failures += 1
        return random.uniform(self.floor * ceiling, ceiling)

    def reset(self) -> None:
        self._failures = 0
