"""On-failure records sent to an SQS queue as message bodies, the way Lambda sends them there.

Lambda sends SQS and SNS only the failure record's metadata; streamfn adds the failed records by
default (``include_records``), split over several messages under the size limit, each carrying
the batch info and a slice of the records. A FIFO queue gets the failed shard as message group
and a deterministic deduplication id, so a batch disposed twice (a crash before its checkpoint)
is delivered once within SQS's deduplication interval.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Annotated

import msgspec
import orjson

from ...aws import AwsClient, Timeout
from ...errors import SinkError
from ...protocols.destination import DestinationConfig, FailedBatch
from ..shared.failure_documents import failure_documents
from ..shared.failure_record import failure_record

if TYPE_CHECKING:
    from ...components import BuildContext

#: SQS and SNS take 256 KiB per message; the rest is room for the JSON around the records.
MAX_MESSAGE_BYTES = 200 * 1024


def message_bodies(failure: FailedBatch, include_records: bool, limit: int = MAX_MESSAGE_BYTES) -> list[str]:
    """The failure as message bodies: Lambda's metadata-only record, or records split under ``limit``."""
    if include_records:
        return [document.decode("utf-8") for document in failure_documents(failure, limit)]
    record = failure_record(failure)
    del record["records"]
    try:
        return [orjson.dumps(record).decode("utf-8")]
    except orjson.JSONEncodeError as exc:
        raise SinkError(f"the failure record of shard {failure.shard_id} is not JSON ({exc})") from exc


def deduplication_id(failure: FailedBatch, part: int) -> str:
    """The same for every send of the same disposed batch (FIFO queues and topics drop repeats)."""
    first, last = failure.records[0].identifier, failure.records[-1].identifier
    key = f"{failure.pipeline}\0{failure.shard_id}\0{first}\0{last}\0{failure.condition}\0{part}"
    return hashlib.sha256(key.encode("utf-8", "backslashreplace")).hexdigest()


def arn_parts(arn: str) -> tuple[str, str, str] | None:
    """``(region, account, resource)`` of an ARN such as ``arn:aws:sqs:us-east-1:123456789012:q``."""
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn":
        return None
    return parts[3], parts[4], parts[5]


class SqsDestinationConfig(DestinationConfig, kw_only=True, tag="sqs"):
    """Failure records sent to an SQS queue: Lambda's JSON document as each message's body."""

    queue: Annotated[str, msgspec.Meta(description="The queue's URL, ARN or name.")]
    include_records: Annotated[bool, msgspec.Meta(description=(
        "Add the failed records (base64 `data`), split over several messages when large; false sends exactly "
        "Lambda's metadata-only record (read the records from the stream before they expire)."))] = True
    endpoint_url: Annotated[str | None, msgspec.Meta(description=(
        "An SQS-compatible endpoint; default "
        "`[aws]`'s, else `AWS_ENDPOINT_URL_SQS` / `AWS_ENDPOINT_URL` / AWS."))] = None
    region: Annotated[str | None, msgspec.Meta(description=(
        "Default: the region in the queue's ARN, else `[aws]`'s, else the environment's."))] = None
    request_timeout: Annotated[Timeout | None, msgspec.Meta(description=(
        "Seconds one request may take in all (connect, send, answer) before it is retried; default "
        "`[aws]`'s, else 30."))] = None

    def build(self, ctx: BuildContext) -> SqsDestination:
        parsed = arn_parts(self.queue)
        aws = ctx.aws.under(region=self.region or (parsed[0] if parsed else None), endpoint_url=self.endpoint_url,
                            request_timeout=self.request_timeout)
        client = aws.client("sqs")
        return SqsDestination(client, self.queue, self.include_records)


class SqsDestination:
    def __init__(self, client: AwsClient, queue: str, include_records: bool) -> None:
        self._client, self._queue, self._include_records = client, queue, include_records
        self._url: str | None = queue if queue.startswith(("http://", "https://")) else None

    async def open(self) -> None:
        await self._client.open()
        if self._url is None:
            self._url = await self._queue_url()

    async def _queue_url(self) -> str:
        parsed = arn_parts(self._queue)
        if parsed is None:
            answer = await self._client.call("get_queue_url", SinkError, QueueName=self._queue)
        else:
            _, account, name = parsed
            answer = await self._client.call("get_queue_url", SinkError, QueueName=name,
                                             QueueOwnerAWSAccountId=account)
        return str(answer["QueueUrl"])

    async def send(self, failure: FailedBatch) -> None:
        if self._url is None:
            self._url = await self._queue_url()
        fifo = self._url.endswith(".fifo")
        for part, body in enumerate(message_bodies(failure, self._include_records)):
            extra = {"MessageGroupId": failure.shard_id,
                     "MessageDeduplicationId": deduplication_id(failure, part)} if fifo else {}
            await self._client.call("send_message", SinkError, QueueUrl=self._url, MessageBody=body, **extra)

    async def close(self) -> None:
        await self._client.close()
