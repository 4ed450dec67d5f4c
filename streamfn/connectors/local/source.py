"""The local source: streamfn's default, a sharded log in one SQLite file that needs no server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from ...errors import SourceError, StateMismatchError
from ...lambda_shapes import kinesis_event
from ...protocols.source import (
    ReadResult,
    ShardInfo,
    ShardReader,
    ShardTip,
    Source,
    SourceConfig,
    SourceTraits,
    StartingPosition,
)
from ...records import Batch, Position
from .log import LocalLog, Retention, TrimmedRange, shard_id_of, shard_index_of
from .tips import TipWatcher

log = logging.getLogger("streamfn.source.local")

if TYPE_CHECKING:
    from ...components import BuildContext

REGION = "local"
LOG_FILE = "log.sqlite3"
# Measured (benchmarks/local_log_layout.py): a read run directly on the loop always gives more
# records/s than one through asyncio.to_thread (decoding holds the GIL; the hop costs ~50-100 us),
# but a 1000-record read holds the loop ~0.2 ms and 5000 ~1 ms. Bigger reads go to a thread so
# other shards' handlers and timers keep running.
DIRECT_READ_MAX = 1000
#: Seconds between two retention passes of a running source (and the first runs at open).
TRIM_INTERVAL = 60.0
#: Seconds between tip lookups of a reader without a (healthy) tip watcher.
FALLBACK_POLL = 0.01
#: Seconds a look at every shard's bounds (tip, oldest retained sequence) serves the readers
#: made after it: shards starting together cost one query. Older than this, it is taken again.
#: A trim through this source makes it out of date at once; one by another process within it reads
#: as one made just after the reader started (its records are counted and logged as trimmed).
BOUNDS_FRESH = 0.5


_PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
_PositiveInt = Annotated[int, msgspec.Meta(gt=0)]


def stream_arn(stream: str) -> str:
    return f"arn:aws:kinesis:{REGION}:000000000000:stream/{stream}"


class LocalSourceConfig(SourceConfig, kw_only=True, tag="local"):
    """A stream of the embedded local log (the default source; no server needed)."""

    stream: Annotated[str, msgspec.Meta(description="The stream's name; created on first start.")]
    shards: Annotated[int, msgspec.Meta(ge=1, description=(
        "How many shards; a stream that exists with another count is an error."))] = 4
    path: Annotated[str | None, msgspec.Meta(description=(
        "The log file, relative to the config's folder; default `<state_dir>/log.sqlite3`."))] = None
    retention_hours: Annotated[_PositiveFloat | Literal["unlimited"], msgspec.Meta(description=(
        "Hours a record is kept; older ones are trimmed, whole blocks (up to 1000 records) at a time. Default"
        ' 24 hours, as Kinesis; "unlimited" keeps every record. Records trimmed before a pipeline handled them'
        " are counted and logged."))] = 24.0
    retention_shard_bytes: Annotated[_PositiveInt | Literal["unlimited"], msgspec.Meta(description=(
        "Most stored bytes per shard; beyond it the oldest blocks are trimmed. Default unlimited."))] = "unlimited"
    retention_stream_bytes: Annotated[_PositiveInt | Literal["unlimited"], msgspec.Meta(description=(
        "Most stored bytes for the whole stream (all shards); beyond it the oldest blocks are trimmed."
        " Default unlimited."))] = "unlimited"

    def retention(self) -> Retention:
        """The retention these fields describe."""
        return Retention(
            max_age=None if self.retention_hours == "unlimited" else self.retention_hours * 3600.0,
            max_shard_bytes=None if self.retention_shard_bytes == "unlimited" else self.retention_shard_bytes,
            max_stream_bytes=None if self.retention_stream_bytes == "unlimited" else self.retention_stream_bytes,
        )

    def build(self, ctx: BuildContext) -> LocalSource:
        return LocalSource(self.log_path(ctx), self.stream, self.shards, retention=self.retention())

    def log_path(self, ctx: BuildContext) -> Path:
        """The log file: ``path`` relative to the config's folder, default ``<state_dir>/log.sqlite3``."""
        return ctx.resolve(self.path) if self.path else ctx.state_dir / LOG_FILE

    def stream_name(self) -> str:
        return self.stream


class LocalSource(Source):
    """A stream of the local log as a Source. Shards never close and have no parents.

    Its events and failure records name it ``arn:aws:kinesis:local:000000000000:stream/<stream>``.

    While open, it trims the stream to its retention every ``trim_interval`` seconds, in a
    thread (a trim is one short transaction per shard; readers never wait on it).
    """

    traits = SourceTraits(kind="local", dense_sequences=True)

    def __init__(self, path: Path, stream: str, shards: int, *, retention: Retention | None = None,
                 trim_interval: float = TRIM_INTERVAL) -> None:
        path = Path(path)
        self.path = path / LOG_FILE if path.is_dir() else path
        self.name = stream
        self.stream_arn = stream_arn(stream)
        self.shard_count = shards
        self.retention = Retention() if retention is None else retention
        self._trim_interval = trim_interval
        self._log: LocalLog | None = None
        self._trimmer: asyncio.Task[None] | None = None
        self._trimming: asyncio.Future[list[TrimmedRange]] | None = None
        self._tips: TipWatcher | None = None
        self._bounds: list[tuple[int, int]] = []
        self._bounds_at = -BOUNDS_FRESH
        self._bounds_trims = 0

    @property
    def log(self) -> LocalLog:
        if self._log is None:
            raise RuntimeError("LocalSource used before open()")
        return self._log

    @property
    def log_id(self) -> str:
        """The identity of the log file (random, chosen when it was created): checkpoints record it,
        and ``LocalCheckpointStore.bind_log`` refuses checkpoints made against another log."""
        return self.log.log_id

    async def shard_tips(self, shard_ids: Sequence[str]) -> dict[str, ShardTip]:
        """Newest sequences; records before the oldest retained one were trimmed (no lag)."""
        bounds = self.log.shard_bounds(self.name)  # one query for every shard
        shown = {}
        for shard_id in shard_ids:
            index = shard_index_of(shard_id)
            if index >= len(bounds):
                raise SourceError(f"no shard {shard_id!r} in stream {self.name!r} of {self.path}")
            tip, first = bounds[index]
            shown[shard_id] = ShardTip(tip, first - 1)
        return shown

    def tips(self) -> dict[str, int]:
        """Each shard's newest sequence (0: nothing appended yet)."""
        return {shard_id_of(index): tip for index, (tip, _) in enumerate(self.log.shard_bounds(self.name))}

    async def open(self) -> None:
        if self._log is None:
            log = LocalLog(self.path)
            try:
                log.create_stream(self.name, self.shard_count)
            except BaseException:
                log.close()
                raise
            self._log = log
            self._tips = TipWatcher(log, self.name, self.shard_count)
            await self._tips.start()
            if not self.retention.unlimited:
                self._trimmer = asyncio.create_task(self._trim_loop(), name=f"trim:{self.name}")

    async def _trim_loop(self) -> None:
        """Trim now, then every interval; a failed pass (disk full...) is logged and tried again."""
        while True:
            # Shielded: cancelling the loop must not abandon a trim whose thread still uses the log.
            self._trimming = asyncio.ensure_future(asyncio.to_thread(self.log.trim, self.name, self.retention))
            try:
                trimmed = await asyncio.shield(self._trimming)
            except Exception as exc:
                log.warning("trimming the local log failed; trying again in %.0fs", self._trim_interval,
                            extra={"stream": self.name, "path": str(self.path), "error": repr(exc)})
            else:
                for piece in trimmed:
                    log.info("retention trimmed records", extra={
                        "stream": self.name, "shard": piece.shard_id, "first_sequence": piece.first,
                        "last_sequence": piece.last, "records": piece.records})
            await asyncio.sleep(self._trim_interval)

    async def list_shards(self) -> list[ShardInfo]:
        return [ShardInfo(shard_id) for shard_id in self.log.shard_ids(self.name)]

    def reader(self, shard: ShardInfo, after: Position | None, start: StartingPosition) -> LocalShardReader:
        tip, first = self._shard_bounds(shard.shard_id)
        return LocalShardReader(self.log, self.name, shard.shard_id, self._start_after(shard, after, start, first),
                                self._tips, known_tip=tip)

    def _shard_bounds(self, shard_id: str) -> tuple[int, int]:
        """A shard's tip (or an older one: tips only grow) and its oldest retained sequence, from a
        look at every shard taken at most ``BOUNDS_FRESH`` seconds ago."""
        log, now = self.log, time.monotonic()
        if now - self._bounds_at > BOUNDS_FRESH or log.trims != self._bounds_trims:
            self._bounds_trims = log.trims
            self._bounds, self._bounds_at = log.shard_bounds(self.name), now
        index = shard_index_of(shard_id)
        if index >= len(self._bounds):
            raise SourceError(f"no shard {shard_id!r} in stream {self.name!r} of {self.path}")
        return self._bounds[index]

    def _start_after(self, shard: ShardInfo, after: Position | None, start: StartingPosition, retained: int) -> int:
        """The sequence the reader continues after: records strictly above it are read (``retained``:
        the oldest retained sequence, as recently seen)."""
        if after is not None:
            return after.sequence
        if start.position is not None:  # sequences are dense here: at N is after N - 1
            return start.position.sequence - 1
        if start.kind == "trim_horizon":  # the oldest record retained: nothing counts as trimmed
            return retained - 1
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
        if self._tips is not None:
            await self._tips.stop()
            self._tips = None
        if self._trimmer is not None:
            self._trimmer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._trimmer
            self._trimmer = None
        if self._trimming is not None:  # the log's connections close only once no trim uses them
            await asyncio.gather(self._trimming, return_exceptions=True)
            self._trimming = None
        if self._log is not None:
            self._log.close()
            self._log = None


class LocalShardReader(ShardReader):
    """Reads one shard after a sequence; while it is idle, waits on the source's tip watcher
    (without one, or while the watcher cannot read the log, it looks up its tip every few ms).

    Records that retention trimmed before they were read are skipped, counted in
    ``ReadResult.trimmed`` and logged: sequences are dense, so a gap can only be a trim.
    """

    def __init__(self, log: LocalLog, stream: str, shard_id: str, after_seq: int,
                 tips: TipWatcher | None = None, *, known_tip: int = -1) -> None:
        """``known_tip``: the shard's tip as seen recently (tips only grow); looked up when lower
        than ``after_seq``."""
        tip = known_tip if known_tip >= after_seq else log.last_seq(stream, shard_id)
        if after_seq > tip:
            # Sequences never restart, so a position past the tip was made against another log.
            raise StateMismatchError(
                f"{shard_id} of stream {stream!r} would resume after sequence {after_seq}, but {log.path} ends at"
                f" {tip}: the checkpoints belong to another log (was the log file recreated or replaced?). Put the"
                " old log back, or reset the checkpoints to read this log from its start:"
                " `streamfn checkpoints reset CONFIG`"
            )
        self._log = log
        self._stream = stream
        self._shard_id = shard_id
        self._after = after_seq
        self._tips = tips
        self._shard = shard_index_of(shard_id)

    @property
    def after_seq(self) -> int:
        return self._after

    def start_position(self) -> Position | None:
        return Position(self._after)

    async def read(self, max_records: int, wait: float) -> ReadResult:
        deadline = time.monotonic() + wait
        tips = self._tips
        while True:
            # The watcher's tip when it is healthy: an idle shard then costs no lookup at all.
            tip = tips.tips[self._shard] if tips is not None and tips.healthy else self._tip()
            if tip > self._after:
                # (No read-ahead here: the engine asks for whole multiples of the batch size itself,
                # and a small read inside a block already read is served by the log's read cache.)
                args = (self._stream, self._shard_id, self._after, max_records, tip)
                # A read of up to DIRECT_READ_MAX records runs here (no coroutine or thread of its own);
                # a bigger one in a thread, so the loop keeps serving other shards meanwhile.
                records = (self._log.read(*args) if min(tip - self._after, max_records) <= DIRECT_READ_MAX
                           else await asyncio.to_thread(self._log.read, *args))
                # Dense sequences: a gap before the first record (or no record at all) is a trim.
                next_seq = records.position_at(0).sequence if records else self._first_retained()
                trimmed = self._skip_trimmed(next_seq)
                if records:
                    self._after = records.position_at(-1).sequence
                    behind = max(0.0, (time.time() - records.arrival_at(-1)) * 1000.0)
                    return ReadResult(records, behind_ms=behind, trimmed=trimmed)
                if trimmed:
                    return ReadResult([], behind_ms=None, trimmed=trimmed)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return ReadResult([], behind_ms=0.0)
            if tips is not None and tips.healthy:
                await tips.wait(self._shard, self._after, remaining)
            else:
                await asyncio.sleep(min(FALLBACK_POLL, remaining))

    def _tip(self) -> int:
        return self._log.last_seq(self._stream, self._shard_id)

    def _first_retained(self) -> int:
        return self._log.first_retained_seq(self._stream, self._shard_id)

    def _skip_trimmed(self, next_seq: int) -> int:
        """Move past records trimmed before ``next_seq``; how many were skipped."""
        skipped = next_seq - 1 - self._after
        if skipped <= 0:
            return 0
        log.warning(
            "records trimmed by retention before this pipeline read them; skipped",
            extra={"stream": self._stream, "shard": self._shard_id, "first_sequence": self._after + 1,
                   "last_sequence": next_seq - 1, "records": skipped},
        )
        self._after = next_seq - 1
        return skipped

    async def close(self) -> None:
        """Nothing to release: the log's connections belong to the source."""
