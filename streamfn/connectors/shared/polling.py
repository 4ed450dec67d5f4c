"""The shard reader shared by the iterator-based sources (Kinesis, DynamoDB Streams).

Read discipline per shard: at most ``max_reads_per_second`` ``GetRecords`` calls;
``NextShardIterator`` kept even from empty answers; throttling, timeouts and 5xx retried with
jittered backoff inside ``read`` (never an error for the engine, never a moved checkpoint); an
expired iterator (the service said so, or it is older than the assumed lifetime) re-acquired
strictly after the last record *delivered*, never from the starting position. Records decoded
but not yet delivered are dropped on re-acquisition and read again. A shard is over when an
answer has no ``NextShardIterator`` and every record before it has been delivered.

Every position sent to the service is one it handed out (a delivered record, or an
``at_sequence`` start naming a record read earlier). A request the service rejects for good
(``InvalidArgumentException``, ``ResourceNotFoundException``, trimmed data...) raises
``SourceError`` naming the shard and the position: retrying the same request cannot succeed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from typing import Annotated, Any

import msgspec

from ...aws import AwsClient, Timeout, error_code
from ...backoff import Backoff
from ...errors import RetryableError, SourceError
from ...protocols.source import ReadResult, ShardReader, SourceConfig, StartingPosition
from ...records import Position, Record

log = logging.getLogger(__name__)


class ReadSettings(msgspec.Struct, frozen=True):
    """The knobs of one source's readers (taken from its config)."""

    max_reads_per_second: float
    idle_interval: float
    read_limit: int
    iterator_lifetime: float
    backoff_initial: float
    backoff_max: float



class PolledSourceConfig(SourceConfig, kw_only=True):
    """What the polled AWS sources (Kinesis, DynamoDB Streams) share. Each declares the defaults of
    its own read limits (the services differ); the retry and timeout settings are the same."""

    max_reads_per_second: float
    idle_interval: float
    read_limit: int
    iterator_lifetime: float
    backoff_initial: Annotated[float, msgspec.Meta(gt=0, description=(
        "Seconds before the first retry of a throttled or failed request; doubled up to backoff_max (with "
        "jitter)."))] = 0.2
    backoff_max: Annotated[float, msgspec.Meta(gt=0, description=(
        "Most seconds between two retries of a throttled or failed request."))] = 10.0
    request_timeout: Annotated[Timeout | None, msgspec.Meta(description=(
        "Seconds one request may take in all (connect, send, answer) before it is retried; default "
        "`[aws]`'s, else 30."))] = None

    def read_settings(self) -> ReadSettings:
        """The knobs its readers run with."""
        return ReadSettings(self.max_reads_per_second, self.idle_interval, self.read_limit, self.iterator_lifetime,
                            self.backoff_initial, self.backoff_max)


class Page(msgspec.Struct):
    """One decoded ``GetRecords`` answer."""

    records: list[Record]
    next_iterator: str | None
    behind_ms: float | None = None


class PollingShardReader(ShardReader, ABC):
    """One shard's iterator and read loop; subclasses name the iterator request and decode answers."""

    def __init__(self, aws: AwsClient, settings: ReadSettings, shard_id: str, after: Position | None,
                 start: StartingPosition) -> None:
        self._aws = aws
        self._settings = settings
        self.shard_id = shard_id
        self._start = start
        #: The last record handed to the engine: every re-read resumes strictly after it.
        self._delivered = after
        self._delivered_record: Record | None = None
        self._iterator: str | None = None
        self._iterator_at = 0.0
        self._pending: list[Record] = []
        self._closed = False
        self._next_call = 0.0
        self._min_interval = 1.0 / settings.max_reads_per_second
        self._backoff = Backoff(settings.backoff_initial, max(settings.backoff_max, settings.backoff_initial))
        self.behind_ms: float | None = None
        self.iterator_acquisitions = 0
        self.retries = 0

    # -- what a source provides -----------------------------------------------------------
    @abstractmethod
    def iterator_request(self, delivered: Position | None, record: Record | None) -> dict[str, Any]:
        """``GetShardIterator`` arguments: strictly after ``delivered``, or at the starting position."""

    @abstractmethod
    def decode(self, body: bytes) -> Page:
        """Records of one raw ``GetRecords`` body, in shard order."""

    def exact_restart(self) -> bool:
        """Whether a new iterator would start exactly where the current one is (else keep it
        until the service says it expired: a LATEST iterator cannot be re-acquired in place)."""
        return self._delivered is not None or self._start.kind in ("trim_horizon", "at_sequence")

    # -- the read loop ------------------------------------------------------------------------
    async def read(self, max_records: int, wait: float) -> ReadResult:
        if self._pending:
            return self._take(max_records)
        if self._closed:
            return ReadResult([], shard_end=True, behind_ms=0.0)
        deadline = time.monotonic() + wait
        while True:
            # The batch size does not cap the request: a big answer is served over several reads.
            page = await self._get_records(self._settings.read_limit, deadline)
            if page is None:
                return ReadResult([], behind_ms=self.behind_ms)
            if page.next_iterator is None:
                self._closed = True
            if page.records:
                self._pending = self._after_delivered(page.records)
                if self._pending:
                    return self._take(max_records)
            if self._closed:
                return ReadResult([], shard_end=True, behind_ms=0.0)
            if page.behind_ms:  # data past an empty stretch: keep reading at the allowed rate
                continue
            self._next_call = max(self._next_call, time.monotonic() + self._settings.idle_interval)
            if self._next_call > deadline:
                return ReadResult([], behind_ms=self.behind_ms)

    def _take(self, max_records: int) -> ReadResult:
        records, self._pending = self._pending[:max_records], self._pending[max_records:]
        self._delivered_record = records[-1]
        self._delivered = self._delivered_record.position
        end = self._closed and not self._pending
        return ReadResult(records, shard_end=end, behind_ms=0.0 if end else self.behind_ms)

    def _after_delivered(self, records: list[Record]) -> list[Record]:
        """Drop what was delivered already (a record or aggregate read again from its own
        sequence), or, before any delivery, what precedes an ``at_sequence`` start (the
        sub-records of an aggregate before the one named)."""
        delivered = self._delivered
        if delivered is not None:
            if records[0].position > delivered:
                return records
            return [r for r in records if r.position > delivered]
        floor = self._start.position
        if floor is None or records[0].position >= floor:
            return records
        return [r for r in records if r.position >= floor]

    async def _get_records(self, limit: int, deadline: float) -> Page | None:
        """One successful answer, or None when the rate limit or retries run past ``deadline``."""
        from ..kinesis.decode import raw_body

        while True:
            now = time.monotonic()
            if self._next_call > now:
                if self._next_call > deadline:
                    return None
                await asyncio.sleep(self._next_call - now)
            if self._iterator is None or (time.monotonic() - self._iterator_at > self._settings.iterator_lifetime
                                          and self.exact_restart()):
                await self._acquire_iterator()
            self._next_call = time.monotonic() + self._min_interval
            try:
                answer = await self._aws.call("get_records", SourceError, ShardIterator=self._iterator, Limit=limit)
            except RetryableError as exc:
                self.retries += 1
                delay = self._backoff.next_delay()
                log.debug("GetRecords throttled or failed; retrying in %.2fs", delay,
                          extra={"shard": self.shard_id, "error": str(exc)})
                self._next_call = max(self._next_call, time.monotonic() + delay)
                continue
            except SourceError as exc:
                if error_code(exc.__cause__ or exc) == "ExpiredIteratorException":
                    log.info("shard iterator expired; re-acquiring after the last delivered record",
                             extra={"shard": self.shard_id})
                    self._iterator = None
                    continue
                raise self._blocked("GetRecords", self._where(), exc) from exc
            self._backoff.reset()
            page = self.decode(raw_body(answer))
            self._iterator = page.next_iterator
            self._iterator_at = time.monotonic()
            if page.behind_ms is not None:
                self.behind_ms = page.behind_ms
            return page

    async def _acquire_iterator(self) -> None:
        self._pending = []
        request = self.iterator_request(self._delivered, self._delivered_record)
        settings = self._settings
        backoff = Backoff(settings.backoff_initial, max(settings.backoff_max, settings.backoff_initial))
        while True:
            try:
                answer = await self._aws.call("get_shard_iterator", SourceError, **request)
                break
            except RetryableError:
                self.retries += 1
                await asyncio.sleep(backoff.next_delay())
            except SourceError as exc:
                raise self._blocked("GetShardIterator", describe_request(request), exc) from exc
        self.iterator_acquisitions += 1
        self._iterator = answer["ShardIterator"]
        self._iterator_at = time.monotonic()

    def _where(self) -> str:
        if self._delivered is not None:
            return f"after {show(self._delivered)}"
        if self._start.position is not None:
            return f"at {show(self._start.position)}"
        return f"from {self._start.kind}"

    def _blocked(self, operation: str, where: str, exc: SourceError) -> SourceError:
        """The error that blocks this shard: which shard, which position, and what to do."""
        code = error_code(exc.__cause__ or exc) or "error"
        hint = REJECTED_HINTS.get(code, "see the error; the shard stays blocked until the cause is fixed")
        return SourceError(f"shard {self.shard_id}: {operation} {where} failed for good ({code}): {hint} [{exc}]")

    async def close(self) -> None:
        """Nothing to release: the client belongs to the source."""


#: How an operator moves a checkpoint the service refuses.
MOVE_CHECKPOINT = ("move the shard's checkpoint: `streamfn checkpoints reset|set` with a DynamoDB lease table, "
                   "else delete the shard's row in the state folder's checkpoints.sqlite3")

#: What to do about a request the service refuses for good, by AWS error code.
REJECTED_HINTS = {
    "InvalidArgumentException": (
        "the service does not know this position in this shard (a checkpoint from another stream, or a "
        f"number it never handed out); {MOVE_CHECKPOINT}"),
    "ResourceNotFoundException": (
        "the service knows no such stream, shard or record (deleted, past retention, or a number it never "
        f"handed out); check the source, or {MOVE_CHECKPOINT}"),
    "TrimmedDataAccessException": (
        f"the position is older than the stream's retention: those records are gone; {MOVE_CHECKPOINT}"),
}


def show(position: Position) -> str:
    """A position as logs and errors print it: ``sequence`` or ``sequence:sub``."""
    return str(position)


def describe_request(request: dict[str, Any]) -> str:
    """The place a ``GetShardIterator`` request asked for, e.g. ``AT_SEQUENCE_NUMBER 4953...``."""
    number = request.get("StartingSequenceNumber") or request.get("SequenceNumber") or request.get("Timestamp")
    kind = str(request.get("ShardIteratorType"))
    return f"{kind} {number}" if number is not None else kind
