"""On-failure records published to an SNS topic as the message, the way Lambda publishes them.

The message is the same JSON document as for SQS (see :mod:`streamfn.connectors.sqs.destination`): Lambda's
record, with the failed records added unless ``include_records`` is false. A FIFO topic gets the
failed shard as message group and a deterministic deduplication id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import msgspec

from ...aws import AwsClient, Timeout
from ...errors import SinkError
from ...protocols.destination import DestinationConfig, FailedBatch
from ..sqs.destination import arn_parts, deduplication_id, message_bodies

if TYPE_CHECKING:
    from ...components import BuildContext


class SnsDestinationConfig(DestinationConfig, kw_only=True, tag="sns"):
    """Failure records published to an SNS topic: Lambda's JSON document as each message."""

    topic_arn: Annotated[str, msgspec.Meta(description="The topic's ARN.")]
    include_records: Annotated[bool, msgspec.Meta(description=(
        "Add the failed records (base64 `data`), split over several messages when large; false sends exactly "
        "Lambda's metadata-only record."))] = True
    endpoint_url: Annotated[str | None, msgspec.Meta(description=(
        "An SNS-compatible endpoint; default "
        "`[aws]`'s, else `AWS_ENDPOINT_URL_SNS` / `AWS_ENDPOINT_URL` / AWS."))] = None
    region: Annotated[str | None, msgspec.Meta(description=(
        "Default: the region in the topic's ARN, else `[aws]`'s, else the environment's."))] = None
    request_timeout: Annotated[Timeout | None, msgspec.Meta(description=(
        "Seconds one request may take in all (connect, send, answer) before it is retried; default "
        "`[aws]`'s, else 30."))] = None

    def __post_init__(self) -> None:
        if arn_parts(self.topic_arn) is None:
            raise ValueError(f"topic_arn {self.topic_arn!r} is not an ARN (arn:aws:sns:REGION:ACCOUNT:TOPIC)")

    def build(self, ctx: BuildContext) -> SnsDestination:
        parsed = arn_parts(self.topic_arn)
        aws = ctx.aws.under(region=self.region or (parsed[0] if parsed else None), endpoint_url=self.endpoint_url,
                            request_timeout=self.request_timeout)
        client = aws.client("sns")
        return SnsDestination(client, self.topic_arn, self.include_records)


class SnsDestination:
    def __init__(self, client: AwsClient, topic_arn: str, include_records: bool) -> None:
        self._client, self._topic, self._include_records = client, topic_arn, include_records

    async def open(self) -> None:
        await self._client.open()

    async def send(self, failure: FailedBatch) -> None:
        fifo = self._topic.endswith(".fifo")
        for part, body in enumerate(message_bodies(failure, self._include_records)):
            extra = {"MessageGroupId": failure.shard_id,
                     "MessageDeduplicationId": deduplication_id(failure, part)} if fifo else {}
            await self._client.call("publish", SinkError, TopicArn=self._topic, Message=body, **extra)

    async def close(self) -> None:
        await self._client.close()
