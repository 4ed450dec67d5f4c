"""On-failure records put to a Kinesis stream, split under Kinesis's 1 MiB record limit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import msgspec

from ...aws import AwsClient, Timeout
from ...errors import SinkError
from ...protocols.destination import DestinationConfig, FailedBatch
from ..shared.failure_documents import failure_documents
from .source import KinesisSourceConfig

if TYPE_CHECKING:
    from ...components import BuildContext
    from ...protocols.source import SourceConfig


class KinesisDestinationConfig(DestinationConfig, kw_only=True, tag="kinesis"):
    """Failure records put to a Kinesis stream, partitioned by the failed shard's id."""

    stream: Annotated[str, msgspec.Meta(description=(
        "The Kinesis stream failure records are put to, partitioned by the failed shard's id."))]
    endpoint_url: Annotated[str | None, msgspec.Meta(description=(
        "A Kinesis-compatible endpoint; default "
        "`[aws]`'s, else `AWS_ENDPOINT_URL_KINESIS` / `AWS_ENDPOINT_URL` / AWS."))] = None
    region: Annotated[str | None, msgspec.Meta(description=(
        "AWS region; default `[aws]`'s, else `AWS_REGION` / `AWS_DEFAULT_REGION` / the profile's region."))] = None
    request_timeout: Annotated[Timeout | None, msgspec.Meta(description=(
        "Seconds one request may take in all (connect, send, answer) before it is retried; default "
        "`[aws]`'s, else 30."))] = None

    def build(self, ctx: BuildContext) -> KinesisDestination:
        aws = ctx.aws.under(region=self.region, endpoint_url=self.endpoint_url,
                            request_timeout=self.request_timeout)
        client = aws.client("kinesis")
        return KinesisDestination(client, self.stream)

    def feeds(self, source: SourceConfig, ctx: BuildContext) -> str | None:
        same = (isinstance(source, KinesisSourceConfig)
                and source.stream.rsplit("/", 1)[-1] == self.stream.rsplit("/", 1)[-1]
                and ctx.aws.under(region=source.region, endpoint_url=source.endpoint_url)
                == ctx.aws.under(region=self.region, endpoint_url=self.endpoint_url))
        return "stream" if same else None


class KinesisDestination:
    def __init__(self, client: AwsClient, stream: str) -> None:
        self._client, self._stream = client, stream

    async def open(self) -> None:
        await self._client.open()

    async def send(self, failure: FailedBatch) -> None:
        for document in failure_documents(failure):
            await self._client.call("put_record", SinkError, StreamName=self._stream, Data=document,
                                    PartitionKey=failure.shard_id)

    async def close(self) -> None:
        await self._client.close()
