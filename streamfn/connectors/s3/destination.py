"""On-failure records as S3 objects, keyed like Lambda's S3 destination but deterministically."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import msgspec
import orjson

from ...aws import AwsClient, Timeout
from ...errors import SinkError
from ...paths import key_problem
from ...protocols.destination import DestinationConfig, FailedBatch
from ..shared.failure_record import failure_key, failure_record

if TYPE_CHECKING:
    from ...components import BuildContext


class S3DestinationConfig(DestinationConfig, kw_only=True, tag="s3"):
    """``s3://bucket/<prefix>aws/lambda/<pipeline>/<shard>/YYYY/MM/DD/<first>-<last>.json``, records included."""

    bucket: Annotated[str, msgspec.Meta(description="The bucket failure records are written to.")]
    prefix: Annotated[str, msgspec.Meta(description=(
        "Put before every key: `<prefix>aws/lambda/<pipeline>/<shard>/YYYY/MM/DD/<first>-<last>.json`."))] = ""
    endpoint_url: Annotated[str | None, msgspec.Meta(description=(
        "An S3-compatible endpoint (path-style addressing); default "
        "`[aws]`'s, else `AWS_ENDPOINT_URL_S3` / AWS."))] = None
    region: Annotated[str | None, msgspec.Meta(description=(
        "AWS region; default `[aws]`'s, else `AWS_REGION` / `AWS_DEFAULT_REGION` / the profile's region."))] = None
    request_timeout: Annotated[Timeout | None, msgspec.Meta(description=(
        "Seconds one request may take in all (connect, send, answer) before it is retried; default "
        "`[aws]`'s, else 30."))] = None

    def build(self, ctx: BuildContext) -> S3Destination:
        aws = ctx.aws.under(region=self.region, endpoint_url=self.endpoint_url,
                            request_timeout=self.request_timeout)
        client = aws.client("s3")
        return S3Destination(client, self.bucket, self.prefix)

    def problems(self) -> list[tuple[str, str | None]]:
        return [("prefix", key_problem(self.prefix + "aws/lambda/x.json"))]


class S3Destination:
    def __init__(self, client: AwsClient, bucket: str, prefix: str) -> None:
        self._client, self._bucket, self._prefix = client, bucket, prefix

    async def open(self) -> None:
        await self._client.open()

    async def send(self, failure: FailedBatch) -> None:
        try:
            body = orjson.dumps(failure_record(failure, with_payload=True))
        except orjson.JSONEncodeError as exc:
            raise SinkError(f"S3 destination: the failure record of shard {failure.shard_id} is not JSON "
                            f"({exc})") from exc
        await self._client.call("put_object", SinkError, Bucket=self._bucket, Key=self._prefix + failure_key(failure),
                                Body=body, ContentType="application/json")

    async def close(self) -> None:
        await self._client.close()
