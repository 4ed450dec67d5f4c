"""The handlers the benchmarks run, and the append-to-completion latencies they record when asked."""

from __future__ import annotations

import time
from typing import Any

from streamfn import Batch, Context

#: Set by the harness during the live phase: each call then records, per record, the seconds
#: from its append to the end of the call. Off during the throughput phase, where it would cost.
MEASURE = False
LATENCIES: list[float] = []


def _record(batch: Batch) -> None:
    # From the arrival column: building each Record (its key decoded) would add to what is measured.
    done = time.time()
    arrival_at = batch.arrival_at
    LATENCIES.extend(done - arrival_at(i) for i in range(len(batch)))


async def noop(batch: Batch, context: Context) -> None:
    """Touches nothing: what is left is the engine's own cost."""
    if MEASURE:
        _record(batch)


async def json(batch: Batch, context: Context) -> None:
    """Decodes every record's JSON, the work the floor loop does, the way README tells users to."""
    batch.json()
    if MEASURE:
        _record(batch)


def json_sync(batch: Batch, context: Context) -> Any:
    """The same work as a plain ``def``: the engine runs it in a worker thread."""
    batch.json()
    if MEASURE:
        _record(batch)
