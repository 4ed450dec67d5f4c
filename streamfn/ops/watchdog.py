"""``run --fail-if-blocked-for``: stop the daemon once any shard has been blocked too long, saying why.

A pipeline retries a failing batch forever by design; in a CI job (``--until-caught-up``) that
would hang until the job's own timeout. The watch reads each shard's stats, sets ``stop`` (a
graceful stop at a batch boundary) and keeps the verdict for the CLI to print and exit 1 on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from ..metrics import ObservedPipeline

log = logging.getLogger("streamfn.watchdog")

#: Seconds between looks at the shards' stats: a verdict comes at most this late.
INTERVAL = 0.2


def blocked_too_long(pipelines: Sequence[ObservedPipeline], limit: float) -> str | None:
    """A sentence naming the first shard blocked for ``limit`` seconds or more, with its error; None if none is."""
    for pipeline in pipelines:
        for shard_id, runner in list(pipeline.runners.items()):
            stats = runner.stats
            blocked = stats.blocked_for()
            if blocked > 0 and blocked >= limit:
                return (f"pipeline {pipeline.name!r} shard {shard_id} has been blocked for {blocked:.1f}s "
                        f"(--fail-if-blocked-for {limit:g}) by {stats.blocked_cause or 'a write in flight'}, "
                        f"attempt {stats.attempt}: {stats.last_error or 'no error reported yet'}")
    return None


class BlockedWatch:
    """Watches the daemon's pipelines; on a verdict, sets ``stop`` and keeps the verdict."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.stop = asyncio.Event()
        self.verdict: str | None = None

    async def run(self, pipelines: Sequence[ObservedPipeline]) -> None:
        while not self.stop.is_set():
            verdict = blocked_too_long(pipelines, self.limit)
            if verdict is not None:
                self.verdict = verdict
                log.error("stopping: %s", verdict)  # now, not only after the graceful stop
                self.stop.set()
                return
            await asyncio.sleep(INTERVAL)
