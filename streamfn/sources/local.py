"""The local source: streamfn's default, a sharded log in one SQLite file that needs no server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from ..lambda_shapes import kinesis_event
from ..records import Batch, Position
from .base import ReadResult, ShardInfo, StartingPosition
from .local_log import LocalLog

if TYPE_CHECKING:
    from ..components import BuildContext

REGION = "local"
LOG_FILE = "log.sqlite3"
# Measured (benchmarks/local_log_layout.py): a read run directly on the loop always gives more
# records/s than one through asyncio.to_thread (decoding holds the GIL; the hop costs ~50-100 us),
# but a 1000-record read holds the loop ~0.2 ms and 5000 ~1 ms. Bigger reads go to a thread so
# other shards' handlers and timers keep running.
DIRECT_READ_MAX = 1000
POLL_FIRST_SLEEP = 0.001
POLL_MAX_SLEEP = 0.05


def stream_arn(stream: str) -> str:
    return f"arn:aws:kinesis:{REGION}:000000000000:stream/{stream}"


class LocalSourceConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type", tag="local"):
    """A stream of the embedded local log (the default source; no server needed)."""

    stream: str
    """The stream's name; created on first start."""
    shards: Annotated[int, msgspec.Meta(ge=1)] = 4
    """How many shards; a stream that exists with another count is an error."""
    path: str | None = None
    """The log file, relative to the config's folder; default ``<state_dir>/log.sqlite3``."""

    def build(self, ctx: BuildContext) -> LocalSource:
        path = ctx.resolve(self.path) if self.path else ctx.state_dir / LOG_FILE
        return LocalSource(path, self.stream, self.shards)


class LocalSource:
    """A stream of the local log as a Source. Shards never close and have no parents."""

    def __init__(self, path: Path, stream: str, shards: int) -> None:
        path = Path(path)
        self.path = path / LOG_FILE if path.is_dir() else path
        self.name = stream
        self.shard_count = shards
        self._log: LocalLog | None = None

    @property
    def log(self) -> LocalLog:
        if self._log is None:
            raise RuntimeError("LocalSource used before open()")
        return self._log

    async def open(self) -> None:
        if self._log is None:
            log = LocalLog(self.path)
            log.create_stream(self.name, self.shard_count)
            self._log = log

    async def list_shards(self) -> list[ShardInfo]:
        return [ShardInfo(shard_id) for shard_id in self.log.shard_ids(self.name)]

    def reader(self, shard: ShardInfo, after: Position | None, start: StartingPosition) -> LocalShardReader:
        return LocalShardReader(self.log, self.name, shard.shard_id, self._start_after(shard, after, start))

    def _start_after(self, shard: ShardInfo, after: Position | None, start: StartingPosition) -> int:
        """The sequence the reader continues after: records strictly above it are read."""
        if after is not None:
            return after.sequence
        if start.position is not None:  # sequences are dense here: at N is after N - 1
            return start.position.sequence - 1
        if start.kind == "trim_horizon":
            return 0
        tip = self.log.last_seq(self.name, shard.shard_id)
        if start.kind == "latest":
            return tip
        if start.timestamp is None:
            raise ValueError("starting position at_timestamp needs a timestamp")
        first = self.log.first_seq_at_or_after(self.name, shard.shard_id, start.timestamp)
        # Arrivals only grow within a shard, so "none yet" means "everything after the tip".
        return tip if first is None else first - 1

    def lambda_event(self, batch: Batch) -> dict[str, Any]:
        return kinesis_event(batch, stream_arn(self.name), REGION)

    async def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class LocalShardReader:
    """Reads one shard after a sequence, polling with a growing sleep while the shard is idle."""

    def __init__(self, log: LocalLog, stream: str, shard_id: str, after_seq: int) -> None:
        self._log = log
        self._stream = stream
        self._shard_id = shard_id
        self._after = after_seq

    @property
    def after_seq(self) -> int:
        return self._after

    async def read(self, max_records: int, wait: float) -> ReadResult:
        deadline = time.monotonic() + wait
        sleep = POLL_FIRST_SLEEP
        while True:
            # The tip is one primary-key lookup: an idle poll never touches a block.
            pending = self._log.last_seq(self._stream, self._shard_id) - self._after
            if pending > 0:
                records = await self._read(max_records, pending)
                if records:
                    self._after = records[-1].sequence
                    behind = max(0.0, (time.time() - records[-1].arrival_time) * 1000.0)
                    return ReadResult(records, behind_ms=behind)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return ReadResult([], behind_ms=0.0)
            await asyncio.sleep(min(sleep, remaining))
            sleep = min(sleep * 2, POLL_MAX_SLEEP)

    async def _read(self, max_records: int, pending: int) -> list[Any]:
        args = (self._stream, self._shard_id, self._after, max_records)
        if min(pending, max_records) <= DIRECT_READ_MAX:
            return self._log.read(*args)
        return await asyncio.to_thread(self._log.read, *args)

    async def close(self) -> None:
        """Nothing to release: the log's connections belong to the source."""
