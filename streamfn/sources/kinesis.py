"""The Kinesis source: polling ``GetRecords`` per shard, as a Lambda event source mapping does.

Each shard reader owns an iterator and follows the per-shard read discipline: at most
``max_reads_per_second`` calls, ``NextShardIterator`` kept even from empty answers, backoff with
jitter on throttling and transient failures (never an error for the engine), and an expired
iterator re-acquired ``AFTER_SEQUENCE_NUMBER`` of the last record *delivered* (never from the
starting position). A closed shard ends when its answer has no ``NextShardIterator``; the engine
then checkpoints ``SHARD_END`` and starts the children listed with it as parents.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from ..aws import AwsClient, error_code
from ..backoff import Backoff
from ..errors import RetryableError, SourceError
from ..lambda_shapes import DEFAULT_INVOKE_IDENTITY_ARN, kinesis_event
from ..records import Batch, Position, Record
from .base import ReadResult, ShardInfo, StartingPosition
from .kinesis_decode import KinesisPage, decode_kinesis, install_raw_get_records, raw_body

if TYPE_CHECKING:
    from ..components import BuildContext

log = logging.getLogger(__name__)

#: Kinesis lets an iterator live 5 minutes; re-acquire a little before that.
DEFAULT_ITERATOR_LIFETIME = 280.0
MAX_LIMIT = 10_000


class KinesisSourceConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type", tag="kinesis"):
    """A Kinesis data stream, read by polling (shared throughput, like Lambda's standard iterator)."""

    stream: str
    """The stream's name, or its ARN."""
    endpoint_url: str | None = None
    """A Kinesis-compatible endpoint; default: ``AWS_ENDPOINT_URL_KINESIS`` / ``AWS_ENDPOINT_URL`` / AWS."""
    region: str | None = None
    """Default: ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` / the profile's region."""
    max_reads_per_second: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    """GetRecords calls per second per shard at most (Kinesis allows 5, shared by all consumers)."""
    idle_interval: Annotated[float, msgspec.Meta(ge=0)] = 0.5
    """Seconds between polls of a shard that is caught up."""
    read_limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)] = MAX_LIMIT
    """The most records one GetRecords asks for (also capped by the batch size)."""
    iterator_lifetime: Annotated[float, msgspec.Meta(ge=0)] = DEFAULT_ITERATOR_LIFETIME
    """Seconds an iterator is assumed valid; an older one is re-acquired after the last delivered record."""
    deaggregate: bool = True
    """Expand KPL-aggregated records into their user records (with sub-sequence numbers)."""
    backoff_initial: Annotated[float, msgspec.Meta(gt=0)] = 0.2
    backoff_max: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    request_timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    invoke_identity_arn: str = DEFAULT_INVOKE_IDENTITY_ARN
    """``invokeIdentityArn`` in Lambda-shaped events."""

    def build(self, ctx: BuildContext) -> KinesisSource:
        return KinesisSource(self)


class KinesisSource:
    """A Kinesis stream as a Source: shards from ``ListShards``, one polling reader per shard."""

    def __init__(self, config: KinesisSourceConfig) -> None:
        self.config = config
        is_arn = config.stream.startswith("arn:")
        self.name = config.stream.rsplit("/", 1)[-1] if is_arn else config.stream
        self.stream_arn = config.stream if is_arn else ""
        self._by_arn = is_arn
        self.aws = AwsClient("kinesis", endpoint_url=config.endpoint_url, region=config.region,
                             timeout=config.request_timeout, max_pool_connections=256)
        self.hash_ranges: dict[str, tuple[int, int]] = {}

    @property
    def region(self) -> str:
        return self.aws.region

    def stream_args(self) -> dict[str, str]:
        """Name the stream as the config does: by ARN (cross-account) or by name (every emulator)."""
        return {"StreamARN": self.stream_arn} if self._by_arn else {"StreamName": self.name}

    async def open(self) -> None:
        client = await self.aws.open()
        install_raw_get_records(client)
        if not self.stream_arn:
            try:
                summary = await self.aws.call("describe_stream_summary", SourceError, StreamName=self.name)
                self.stream_arn = summary["StreamDescriptionSummary"]["StreamARN"]
            except SourceError as exc:
                if "ResourceNotFound" in str(exc):
                    raise SourceError(f"Kinesis stream {self.name!r} does not exist") from exc
                raise

    async def list_shards(self) -> list[ShardInfo]:
        shards: list[dict[str, Any]] = []
        args: dict[str, Any] = dict(self.stream_args())
        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                page = await self.aws.call("list_shards", SourceError, **args)
            except RetryableError:
                await asyncio.sleep(backoff.next_delay())
                continue
            shards.extend(page.get("Shards", ()))
            token = page.get("NextToken")
            if not token:
                break
            args = {"NextToken": token}
        for shard in shards:
            hash_range = shard.get("HashKeyRange")
            if hash_range:
                self.hash_ranges[shard["ShardId"]] = (int(hash_range["StartingHashKey"]),
                                                      int(hash_range["EndingHashKey"]))
        return parents_first([
            ShardInfo(s["ShardId"], tuple(p for p in (s.get("ParentShardId"), s.get("AdjacentParentShardId")) if p))
            for s in shards
        ])

    def reader(self, shard: ShardInfo, after: Position | None, start: StartingPosition) -> KinesisShardReader:
        # Sub-records outside the shard's range are dropped only for children of a reshard.
        hash_range = self.hash_ranges.get(shard.shard_id) if shard.parent_ids else None
        return KinesisShardReader(self, shard.shard_id, after, start, hash_range)

    def lambda_event(self, batch: Batch) -> dict[str, Any]:
        return kinesis_event(batch, self.stream_arn, self.region, self.config.invoke_identity_arn)

    async def close(self) -> None:
        await self.aws.close()


def parents_first(shards: list[ShardInfo]) -> list[ShardInfo]:
    """Listed order kept, except that a shard never comes before a listed parent."""
    known = {s.shard_id for s in shards}
    placed: set[str] = set()
    out: list[ShardInfo] = []
    waiting = list(shards)
    while waiting:
        rest = []
        for shard in waiting:
            if all(p in placed or p not in known for p in shard.parent_ids):
                out.append(shard)
                placed.add(shard.shard_id)
            else:
                rest.append(shard)
        if len(rest) == len(waiting):  # a cycle cannot happen in Kinesis; keep the rest as listed
            out.extend(rest)
            break
        waiting = rest
    return out


class KinesisShardReader:
    """Reads one shard after a position; see the module docstring for the discipline."""

    def __init__(self, source: KinesisSource, shard_id: str, after: Position | None, start: StartingPosition,
                 hash_range: tuple[int, int] | None = None) -> None:
        self._source = source
        self._config = source.config
        self.shard_id = shard_id
        self._start = start
        #: The last record handed to the engine: re-reads resume strictly after it.
        self._delivered = after
        self._iterator: str | None = None
        self._iterator_at = 0.0
        self._first_acquired_at: float | None = None  # wall clock of the first LATEST acquisition
        self._pending: list[Record] = []
        self._closed = False  # the last answer had no NextShardIterator: the shard is drained once pending is
        self._next_call = 0.0
        self._min_interval = 1.0 / self._config.max_reads_per_second
        self._backoff = Backoff(self._config.backoff_initial, max(self._config.backoff_max,
                                                                  self._config.backoff_initial))
        self._hash_range = hash_range
        self.behind_ms: float | None = None
        self.iterator_acquisitions = 0
        self.retries = 0

    async def read(self, max_records: int, wait: float) -> ReadResult:
        if self._pending:
            return self._take(max_records)
        if self._closed:
            return ReadResult([], shard_end=True, behind_ms=0.0)
        deadline = time.monotonic() + wait
        while True:
            page = await self._get_records(min(max_records, self._config.read_limit), deadline)
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
            if page.behind_ms:  # more data past an empty stretch: keep reading at the allowed rate
                continue
            self._next_call = max(self._next_call, time.monotonic() + self._config.idle_interval)
            if self._next_call > deadline:
                return ReadResult([], behind_ms=self.behind_ms)

    def _take(self, max_records: int) -> ReadResult:
        records, self._pending = self._pending[:max_records], self._pending[max_records:]
        self._delivered = records[-1].position
        end = self._closed and not self._pending
        return ReadResult(records, shard_end=end, behind_ms=0.0 if end else self.behind_ms)

    def _after_delivered(self, records: list[Record]) -> list[Record]:
        """Drop what was already delivered (a re-read of an aggregate after a sub-record checkpoint)."""
        delivered = self._delivered
        if delivered is None or records[0].position > delivered:
            return records
        return [r for r in records if r.position > delivered]

    async def _get_records(self, limit: int, deadline: float) -> KinesisPage | None:
        """One successful answer, or None when retries and rate limits ran past ``deadline``."""
        while True:
            now = time.monotonic()
            if self._next_call > now:
                if self._next_call > deadline:
                    return None
                await asyncio.sleep(self._next_call - now)
            if self._iterator is None or time.monotonic() - self._iterator_at > self._config.iterator_lifetime:
                await self._acquire_iterator()
            self._next_call = time.monotonic() + self._min_interval
            try:
                answer = await self._source.aws.call("get_records", SourceError, ShardIterator=self._iterator,
                                                     Limit=limit)
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
                raise
            self._backoff.reset()
            page = decode_kinesis(raw_body(answer), self.shard_id, deaggregate_kpl=self._config.deaggregate,
                                  hash_range=self._hash_range)
            self._iterator = page.next_iterator
            self._iterator_at = time.monotonic()
            if page.behind_ms is not None:
                self.behind_ms = page.behind_ms
            return page

    async def _acquire_iterator(self) -> None:
        """An iterator strictly after the last delivered record, else at the starting position.

        Buffered but undelivered records are dropped: the new iterator reads them again.
        """
        self._pending = []
        args: dict[str, Any] = {**self._source.stream_args(), "ShardId": self.shard_id}
        delivered = self._delivered
        if delivered is not None and delivered.sub_sequence:
            # Resume inside an aggregate: read it again and skip the delivered sub-records.
            args.update(ShardIteratorType="AT_SEQUENCE_NUMBER", StartingSequenceNumber=str(delivered.sequence))
        elif delivered is not None:
            args.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=str(delivered.sequence))
        elif self._start.kind == "trim_horizon":
            args.update(ShardIteratorType="TRIM_HORIZON")
        elif self._start.kind == "at_timestamp" or self._first_acquired_at is not None:
            # A LATEST reader that lost its iterator before delivering anything resumes from the
            # moment it first started, so records put in between are not skipped.
            stamp = self._start.timestamp if self._start.kind == "at_timestamp" else self._first_acquired_at
            args.update(ShardIteratorType="AT_TIMESTAMP", Timestamp=stamp)
        else:
            self._first_acquired_at = time.time()
            args.update(ShardIteratorType="LATEST")
        backoff = Backoff(self._config.backoff_initial, max(self._config.backoff_max, self._config.backoff_initial))
        while True:
            try:
                answer = await self._source.aws.call("get_shard_iterator", SourceError, **args)
                break
            except RetryableError:
                await asyncio.sleep(backoff.next_delay())
        self.iterator_acquisitions += 1
        self._iterator = answer["ShardIterator"]
        self._iterator_at = time.monotonic()

    async def close(self) -> None:
        """Nothing to release: the client belongs to the source."""
