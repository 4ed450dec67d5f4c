"""The DynamoDB Streams source: a table's change stream, read like Lambda's DynamoDB mapping.

Shards come from ``DescribeStream`` (paginated by ``ExclusiveStartShardId``), parents first; each
is read by the shared polling reader (about 4 reads per second per shard, iterators living 15
minutes). Every record keeps its Lambda-shaped form in ``attributes`` (``eventName`` INSERT/MODIFY/
REMOVE, ``dynamodb.Keys/NewImage/OldImage``...) and carries the JSON of its ``dynamodb`` part as
``data``; :mod:`streamfn.connectors.dynamodb.dynamodb_json` turns the typed images into plain values.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import msgspec

from ...aws import AWS_DEFAULTS, AwsSettings
from ...backoff import Backoff
from ...errors import ConfigError, RetryableError, SourceError
from ...lambda_shapes import dynamodb_streams_event
from ...protocols.source import ShardInfo, Source, SourceTraits, StartingPosition
from ...records import Batch, Position, Record
from ..kinesis.decode import decode_dynamodb_streams, install_raw_get_records
from ..kinesis.source import parents_first
from ..shared.polling import Page, PolledSourceConfig, PollingShardReader

if TYPE_CHECKING:
    from ...components import BuildContext

#: DynamoDB Streams iterators live 15 minutes; re-acquire a little before that.
DEFAULT_ITERATOR_LIFETIME = 840.0


class DynamoDBStreamsSourceConfig(PolledSourceConfig, kw_only=True, tag="dynamodb_streams"):
    """A DynamoDB table's stream. Name the table (its latest stream is used) or the stream's ARN."""

    table: Annotated[str | None, msgspec.Meta(description=(
        "The table whose latest stream is read; or set stream_arn."))] = None
    stream_arn: Annotated[str | None, msgspec.Meta(description="The stream's ARN; or set table.")] = None
    endpoint_url: Annotated[str | None, msgspec.Meta(description=(
        "Endpoint for both DynamoDB and DynamoDB Streams (emulators serve both on one port); default "
        "`[aws]`'s, else `AWS_ENDPOINT_URL_DYNAMODB_STREAMS` / "
        "`AWS_ENDPOINT_URL_DYNAMODB` / `AWS_ENDPOINT_URL` / AWS."))] = None
    region: Annotated[str | None, msgspec.Meta(description=(
        "AWS region; default `[aws]`'s, else `AWS_REGION` / `AWS_DEFAULT_REGION` / the profile's region."))] = None
    max_reads_per_second: Annotated[float, msgspec.Meta(gt=0, description=(
        "GetRecords calls per second per shard at most (Lambda polls 4 times a second)."))] = 4.0
    idle_interval: Annotated[float, msgspec.Meta(ge=0, description=(
        "Seconds between polls of a shard that is caught up."))] = 0.25
    read_limit: Annotated[int, msgspec.Meta(ge=1, le=1000, description="GetRecords `Limit` (1-1000).")] = 1000
    iterator_lifetime: Annotated[float, msgspec.Meta(ge=0, description=(
        "Seconds an iterator is assumed valid; an older one is re-acquired after the last delivered record."
    ))] = DEFAULT_ITERATOR_LIFETIME

    def __post_init__(self) -> None:
        if (self.table is None) == (self.stream_arn is None):
            raise ValueError("set exactly one of `table` and `stream_arn`")

    unsupported_starts: ClassVar[Mapping[str, str]] = {
        "at_timestamp": "DynamoDB Streams has no AT_TIMESTAMP iterator"}

    def build(self, ctx: BuildContext) -> DynamoDBStreamsSource:
        return DynamoDBStreamsSource(self, ctx.aws)

    def stream_name(self) -> str:
        return self.table or (self.stream_arn or "").split("/table/", 1)[-1].split("/", 1)[0]


class DynamoDBStreamsSource(Source):
    """A table's stream as a Source."""

    traits = SourceTraits(kind="dynamodb_streams", filter_data_key="dynamodb", batch_info_key="DDBStreamBatchInfo")

    def __init__(self, config: DynamoDBStreamsSourceConfig, aws: AwsSettings = AWS_DEFAULTS) -> None:
        self.config = config
        self.stream_arn = config.stream_arn or ""
        self.name = config.table or self.stream_arn.split("/table/", 1)[-1].split("/", 1)[0]
        self.aws_settings = aws.under(region=config.region, endpoint_url=config.endpoint_url,
                                      request_timeout=config.request_timeout)
        self.aws = self.aws_settings.client("dynamodbstreams", max_pool_connections=128)
        self.read_settings = config.read_settings()

    @property
    def region(self) -> str:
        return self.aws.region

    async def open(self) -> None:
        if not self.stream_arn:
            self.stream_arn = await self._latest_stream_arn()
        client = await self.aws.open()
        install_raw_get_records(client)

    async def _latest_stream_arn(self) -> str:
        table = self.aws_settings.client("dynamodb")
        await table.open()
        try:
            described = await table.call("describe_table", SourceError, TableName=self.config.table)
        finally:
            await table.close()
        arn = described["Table"].get("LatestStreamArn")
        if not arn:
            raise ConfigError(f"table {self.config.table!r} has no stream: enable DynamoDB Streams on it",
                              field="source.table")
        return str(arn)

    async def list_shards(self) -> list[ShardInfo]:
        shards: list[dict[str, Any]] = []
        args: dict[str, Any] = {"StreamArn": self.stream_arn}
        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                answer = await self.aws.call("describe_stream", SourceError, **args)
            except RetryableError:
                await asyncio.sleep(backoff.next_delay())
                continue
            description = answer["StreamDescription"]
            shards.extend(description.get("Shards", ()))
            last = description.get("LastEvaluatedShardId")
            if not last:
                break
            args["ExclusiveStartShardId"] = last
        return parents_first([
            ShardInfo(s["ShardId"], (s["ParentShardId"],) if s.get("ParentShardId") else ()) for s in shards
        ])

    def reader(self, shard: ShardInfo, after: Position | None, start: StartingPosition) -> StreamsShardReader:
        if start.kind == "at_timestamp" and after is None:
            raise SourceError("DynamoDB Streams has no AT_TIMESTAMP iterator: use trim_horizon or latest")
        return StreamsShardReader(self, shard.shard_id, after, start)

    def lambda_event(self, batch: Batch) -> dict[str, Any]:
        return dynamodb_streams_event(batch, self.stream_arn, self.region)

    async def close(self) -> None:
        await self.aws.close()


class StreamsShardReader(PollingShardReader):
    """Reads one DynamoDB Streams shard after a position."""

    def __init__(self, source: DynamoDBStreamsSource, shard_id: str, after: Position | None,
                 start: StartingPosition) -> None:
        super().__init__(source.aws, source.read_settings, shard_id, after, start)
        self._source = source

    def decode(self, body: bytes) -> Page:
        page = decode_dynamodb_streams(body, self.shard_id, self._source.stream_arn)
        # Streams report no MillisBehindLatest: the age of the newest record read is the gauge,
        # and an empty answer never means "more data behind" (so behind_ms stays out of the Page).
        if page.records:
            self.behind_ms = max(0.0, (time.time() - page.records[-1].arrival_time) * 1000.0)
        else:
            self.behind_ms = 0.0
        return Page(page.records, page.next_iterator, None)

    def iterator_request(self, delivered: Position | None, record: Record | None) -> dict[str, Any]:
        args: dict[str, Any] = {"StreamArn": self._source.stream_arn, "ShardId": self.shard_id}
        if delivered is not None:
            # Pass the service's own text when we have it (sequence numbers are opaque strings there).
            text = sequence_text(delivered)
            if record is not None and record.attributes:
                text = str(record.attributes.get("dynamodb", {}).get("SequenceNumber", text))
            args.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=text)
        elif self._start.position is not None:
            args.update(ShardIteratorType="AT_SEQUENCE_NUMBER", SequenceNumber=sequence_text(self._start.position))
        elif self._start.kind == "latest":
            args.update(ShardIteratorType="LATEST")
        else:
            args.update(ShardIteratorType="TRIM_HORIZON")
        return args


#: DynamoDB Streams sequence numbers are 21 to 40 digits; shorter ones had leading zeros.
MIN_SEQUENCE_DIGITS = 21


def sequence_text(position: Position) -> str:
    """A stored position as the service wrote it (leading zeros are lost when parsed to int)."""
    return str(position.sequence).zfill(MIN_SEQUENCE_DIGITS)
