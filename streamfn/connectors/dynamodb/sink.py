"""The DynamoDB sink: the handler's items (plain dicts) written to a table.

Writes are puts, so a replayed batch rewrites the same items: idempotent without batch keys.
Items go in ``BatchWriteItem`` calls of 25 (the AWS cap; some emulators accept more), and
``UnprocessedItems`` are sent again with jittered backoff until every item is written. Items
that share a key within one batch are reduced to the last one (``BatchWriteItem`` rejects
duplicate keys). With ``version_attribute`` set, each item is a conditional ``PutItem`` that
only replaces an older version: a failed condition means a newer version is there already, so
it counts as written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import msgspec

from ...aws import AWS_DEFAULTS, AwsSettings, Timeout, error_code
from ...backoff import Backoff
from ...errors import SinkError
from ...protocols.sink import SinkBatch, SinkConfig
from .dynamodb_json import item_to_dynamodb

if TYPE_CHECKING:
    from ...components import BuildContext

BATCH_LIMIT = 25


class DynamoDBSinkConfig(SinkConfig, kw_only=True, tag="dynamodb"):
    """Put each item the handler returns (a dict of plain values) into ``table``."""

    table: Annotated[str, msgspec.Meta(description=(
        "The table items are put into; every item holds the table's key attributes."))]
    endpoint_url: Annotated[str | None, msgspec.Meta(description=(
        "A DynamoDB-compatible endpoint; default "
        "`[aws]`'s, else `AWS_ENDPOINT_URL_DYNAMODB` / `AWS_ENDPOINT_URL` / AWS."))] = None
    region: Annotated[str | None, msgspec.Meta(description=(
        "AWS region; default `[aws]`'s, else `AWS_REGION` / `AWS_DEFAULT_REGION` / the profile's region."))] = None
    version_attribute: Annotated[str | None, msgspec.Meta(description=(
        "Keep the highest version: put only when the stored item's attribute is missing or not higher."))] = None
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=64, description=(
        "Requests in flight at once for one batch."))] = 8
    backoff_initial: Annotated[float, msgspec.Meta(gt=0, description=(
        "Seconds before the first retry of unprocessed items; doubled up to backoff_max (with jitter)."))] = 0.05
    backoff_max: Annotated[float, msgspec.Meta(gt=0, description=(
        "Most seconds between two retries of unprocessed items."))] = 5.0
    request_timeout: Annotated[Timeout | None, msgspec.Meta(description=(
        "Seconds one request may take in all (connect, send, answer) before it is retried; default "
        "`[aws]`'s, else 30."))] = None

    def build(self, ctx: BuildContext) -> DynamoDBSink:
        return DynamoDBSink(self, ctx.aws)


class DynamoDBSink:
    """Items into a DynamoDB table; see the module docstring."""

    keyed_by_batch: ClassVar[bool] = False

    def __init__(self, config: DynamoDBSinkConfig, aws: AwsSettings = AWS_DEFAULTS) -> None:
        self.config = config
        self.aws = aws.under(region=config.region, endpoint_url=config.endpoint_url,
                             request_timeout=config.request_timeout).client("dynamodb")
        self.key_names: tuple[str, ...] = ()
        self.unprocessed_retries = 0
        self.stale_skipped = 0

    async def open(self) -> None:
        await self.aws.open()
        try:
            described = await self.aws.call("describe_table", SinkError, TableName=self.config.table)
        except SinkError:
            await self.aws.close()
            raise
        self.key_names = tuple(k["AttributeName"] for k in described["Table"]["KeySchema"])

    def _unique(self, items: list[Any]) -> list[Mapping[str, Any]]:
        """The items to write: one per key, the last (or, with versions, the highest) winning."""
        version = self.config.version_attribute
        chosen: dict[tuple[Any, ...], Mapping[str, Any]] = {}
        for item in items:
            if not isinstance(item, Mapping):
                raise SinkError(f"DynamoDB sink items must be dicts, got {type(item).__name__}")
            try:
                key = tuple(repr(item[name]) for name in self.key_names)
            except KeyError as exc:
                raise SinkError(f"item lacks key attribute {exc.args[0]!r} of table {self.config.table!r}") from None
            if version is not None:
                if version not in item:
                    raise SinkError(f"item lacks the version attribute {version!r}")
                held = chosen.get(key)
                if held is not None and _newer(held[version], item[version], version):
                    continue
            chosen[key] = item
        return list(chosen.values())

    async def write(self, batch: SinkBatch) -> None:
        items = self._unique(batch.items)
        if not items:
            return
        try:
            encoded = [item_to_dynamodb(item) for item in items]
        except (TypeError, ValueError) as exc:
            raise SinkError(f"an item cannot be stored in DynamoDB table {self.config.table!r}: {exc}") from None
        limit = asyncio.Semaphore(self.config.concurrency)
        if self.config.version_attribute is not None:
            jobs = [self._put_if_newer(item, limit) for item in encoded]
        else:
            jobs = [self._batch_write(encoded[i:i + BATCH_LIMIT], limit) for i in range(0, len(encoded), BATCH_LIMIT)]
        await asyncio.gather(*jobs)

    async def _batch_write(self, chunk: list[dict[str, Any]], limit: asyncio.Semaphore) -> None:
        table = self.config.table
        requests: list[dict[str, Any]] = [{"PutRequest": {"Item": item}} for item in chunk]
        backoff = Backoff(self.config.backoff_initial, max(self.config.backoff_max, self.config.backoff_initial))
        while requests:
            async with limit:
                answer = await self.aws.call("batch_write_item", SinkError, RequestItems={table: requests})
            requests = (answer.get("UnprocessedItems") or {}).get(table) or []
            if requests:
                self.unprocessed_retries += 1
                await asyncio.sleep(backoff.next_delay())

    async def _put_if_newer(self, item: dict[str, Any], limit: asyncio.Semaphore) -> None:
        version = self.config.version_attribute
        assert version is not None
        try:
            async with limit:
                await self.aws.call(
                    "put_item", SinkError, TableName=self.config.table, Item=item,
                    ConditionExpression="attribute_not_exists(#v) OR #v <= :v",
                    ExpressionAttributeNames={"#v": version},
                    ExpressionAttributeValues={":v": item[version]},
                )
        except SinkError as exc:
            if error_code(exc.__cause__ or exc) != "ConditionalCheckFailedException":
                raise
            self.stale_skipped += 1  # a newer version is stored already: nothing to do

    async def close(self) -> None:
        await self.aws.close()


def _newer(held: Any, other: Any, attribute: str) -> bool:
    try:
        return bool(held > other)
    except TypeError:
        raise SinkError(f"two items of one key hold versions that do not compare in {attribute!r}: "
                        f"{held!r} and {other!r}") from None


__all__ = ["DynamoDBSink", "DynamoDBSinkConfig"]
