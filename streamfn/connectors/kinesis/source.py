"""The Kinesis source: polling ``GetRecords`` per shard, as a Lambda event source mapping does.

Each shard reader owns an iterator and follows the read discipline of ``polling`` (rate limit,
backoff, iterator expiry after the last delivered record). KPL aggregates are expanded into
user records with sub-sequence numbers; a checkpoint may sit between two of them. A closed shard
ends when its answer has no ``NextShardIterator``; the engine then checkpoints ``SHARD_END`` and
starts the children that list it as a parent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from ...aws import AWS_DEFAULTS, AwsSettings, error_code
from ...backoff import Backoff
from ...errors import RetryableError, SourceError
from ...lambda_shapes import DEFAULT_INVOKE_IDENTITY_ARN, kinesis_event
from ...protocols.source import ShardInfo, Source, SourceTraits, StartingPosition
from ...records import Batch, Position, Record
from ..shared.polling import Page, PolledSourceConfig, PollingShardReader
from .decode import decode_kinesis, install_raw_get_records

if TYPE_CHECKING:
    from ...components import BuildContext

log = logging.getLogger(__name__)

#: Kinesis lets an iterator live 5 minutes; re-acquire a little before that.
DEFAULT_ITERATOR_LIFETIME = 280.0
MAX_LIMIT = 10_000


class KinesisSourceConfig(PolledSourceConfig, kw_only=True, tag="kinesis"):
    """A Kinesis data stream, read by polling (shared throughput, like Lambda's standard iterator)."""

    stream: Annotated[str, msgspec.Meta(description="The stream's name, or its ARN.")]
    endpoint_url: Annotated[str | None, msgspec.Meta(description=(
        "A Kinesis-compatible endpoint; default "
        "`[aws]`'s, else `AWS_ENDPOINT_URL_KINESIS` / `AWS_ENDPOINT_URL` / AWS."))] = None
    region: Annotated[str | None, msgspec.Meta(description=(
        "Default: `[aws]`'s, else `AWS_REGION` / `AWS_DEFAULT_REGION` / the profile's region."))] = None
    max_reads_per_second: Annotated[float, msgspec.Meta(gt=0, description=(
        "GetRecords calls per second per shard at most (Kinesis allows 5, shared by all consumers)."))] = 5.0
    idle_interval: Annotated[float, msgspec.Meta(ge=0, description=(
        "Seconds between polls of a shard that is caught up."))] = 0.5
    read_limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT, description=(
        "GetRecords `Limit`; what a batch does not take waits in the reader for the next batch."))] = MAX_LIMIT
    iterator_lifetime: Annotated[float, msgspec.Meta(ge=0, description=(
        "Seconds an iterator is assumed valid; an older one is re-acquired after the last delivered record."
    ))] = DEFAULT_ITERATOR_LIFETIME
    deaggregate: Annotated[bool, msgspec.Meta(description=(
        "Expand KPL-aggregated records into their user records (with sub-sequence numbers)."))] = True
    invoke_identity_arn: Annotated[str, msgspec.Meta(description=(
        "`invokeIdentityArn` in Lambda-shaped events."))] = DEFAULT_INVOKE_IDENTITY_ARN

    def build(self, ctx: BuildContext) -> KinesisSource:
        return KinesisSource(self, ctx.aws)

    def stream_name(self) -> str:
        return self.stream.rsplit("/", 1)[-1]


class KinesisSource(Source):
    """A Kinesis stream as a Source: shards from ``ListShards``, one polling reader per shard."""

    traits = SourceTraits(kind="kinesis")

    def __init__(self, config: KinesisSourceConfig, aws: AwsSettings = AWS_DEFAULTS) -> None:
        self.config = config
        is_arn = config.stream.startswith("arn:")
        self.name = config.stream.rsplit("/", 1)[-1] if is_arn else config.stream
        self.stream_arn = config.stream if is_arn else ""
        self._by_arn = is_arn
        self.aws = aws.under(region=config.region, endpoint_url=config.endpoint_url,
                             request_timeout=config.request_timeout).client(
            "kinesis", max_pool_connections=256)
        self.hash_ranges: dict[str, tuple[int, int]] = {}
        self.read_settings = config.read_settings()

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
                await self.aws.close()
                if error_code(exc.__cause__ or exc) == "ResourceNotFoundException":
                    raise SourceError(f"Kinesis stream {self.name!r} does not exist in {self.region} at "
                                      f"{client.meta.endpoint_url}: create it, or fix `source.stream` / "
                                      "`source.endpoint_url` / `source.region` (or `[aws]`'s)") from exc
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


class KinesisShardReader(PollingShardReader):
    """Reads one Kinesis shard after a position (see ``polling`` for the read discipline)."""

    def __init__(self, source: KinesisSource, shard_id: str, after: Position | None, start: StartingPosition,
                 hash_range: tuple[int, int] | None = None) -> None:
        super().__init__(source.aws, source.read_settings, shard_id, after, start)
        self._source = source
        self._hash_range = hash_range
        self._first_acquired_at: float | None = None  # wall clock of the first LATEST acquisition

    def decode(self, body: bytes) -> Page:
        page = decode_kinesis(body, self.shard_id, deaggregate_kpl=self._source.config.deaggregate,
                              hash_range=self._hash_range)
        return Page(page.records, page.next_iterator, page.behind_ms)

    def exact_restart(self) -> bool:
        return True  # LATEST is re-acquired AT_TIMESTAMP of the first acquisition

    def iterator_request(self, delivered: Position | None, record: Record | None) -> dict[str, Any]:
        args: dict[str, Any] = {**self._source.stream_args(), "ShardId": self.shard_id}
        if delivered is not None:
            # AT, not AFTER, the delivered record: it may be the first sub-record (sub-sequence 0) of
            # a KPL aggregate, whose later sub-records AFTER would skip. What was delivered is dropped.
            args.update(ShardIteratorType="AT_SEQUENCE_NUMBER", StartingSequenceNumber=str(delivered.sequence))
        elif self._start.position is not None:
            # A record read earlier (a batch formed again); sub-records before it are dropped.
            args.update(ShardIteratorType="AT_SEQUENCE_NUMBER",
                        StartingSequenceNumber=str(self._start.position.sequence))
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
        return args
