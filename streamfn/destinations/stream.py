"""On-failure records sent to another stream: the local log, Kinesis, or a Kafka topic.

A stream record has a size limit (Kinesis: 1 MiB), so a large failed batch is sent as several
failure records, each carrying the batch info and a slice of the records, keyed by shard.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import orjson

from ..errors import SinkError
from .base import FailedBatch
from .shape import failure_record

if TYPE_CHECKING:
    from ..aws import AwsClient
    from ..components import BuildContext

#: Room for the failure record's metadata under the 1 MiB Kinesis record limit.
MAX_DOCUMENT_BYTES = 900 * 1024


def failure_documents(failure: FailedBatch, limit: int = MAX_DOCUMENT_BYTES) -> list[bytes]:
    """The failure as one or more JSON documents, each under ``limit`` bytes when possible."""
    documents: list[bytes] = []
    chunk: list[Any] = []
    size = 0
    for record in failure.records:
        cost = len(record.data) * 4 // 3 + len(record.partition_key) + 200
        if chunk and size + cost > limit:
            documents.append(_document(failure, chunk))
            chunk, size = [], 0
        chunk.append(record)
        size += cost
    if chunk:
        documents.append(_document(failure, chunk))
    return documents


def _document(failure: FailedBatch, records: list[Any]) -> bytes:
    try:
        return orjson.dumps(failure_record(msgspec.structs.replace(failure, records=records)))
    except orjson.JSONEncodeError as exc:
        raise SinkError(f"the failure record of shard {failure.shard_id} is not JSON ({exc})") from exc


class LocalLogDestinationConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type",
                                tag="local_log"):
    """Failure records appended to a stream of the local log (created with ``shards`` if missing)."""

    stream: Annotated[str, msgspec.Meta(description=(
        "The local-log stream failure records are appended to (not the pipeline's own source)."))]
    shards: Annotated[int, msgspec.Meta(description="Shards of that stream when it is created.")] = 1
    path: Annotated[str | None, msgspec.Meta(description=(
        "The log file; default: the pipeline's own `<state_dir>/log.sqlite3`."))] = None

    def build(self, ctx: BuildContext) -> LocalLogDestination:
        path = ctx.resolve(self.path) if self.path else ctx.state_dir / "log.sqlite3"
        return LocalLogDestination(path, self.stream, self.shards)


class LocalLogDestination:
    def __init__(self, path: Path, stream: str, shards: int) -> None:
        from ..sources.local_log import LocalLog

        self._path, self._stream, self._shards = path, stream, shards
        self._log: LocalLog | None = None

    async def open(self) -> None:
        from ..sources.local_log import LocalLog

        self._log = LocalLog(self._path)
        self._log.create_stream(self._stream, self._shards)

    async def send(self, failure: FailedBatch) -> None:
        assert self._log is not None
        log, stream = self._log, self._stream
        documents = [(failure.shard_id, doc) for doc in failure_documents(failure)]
        await asyncio.to_thread(log.append, stream, documents)

    async def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class KinesisDestinationConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type",
                               tag="kinesis"):
    """Failure records put to a Kinesis stream, partitioned by the failed shard's id."""

    stream: Annotated[str, msgspec.Meta(description=(
        "The Kinesis stream failure records are put to, partitioned by the failed shard's id."))]
    endpoint_url: Annotated[str | None, msgspec.Meta(description=(
        "A Kinesis-compatible endpoint; default `AWS_ENDPOINT_URL_KINESIS` / `AWS_ENDPOINT_URL` / AWS."))] = None
    region: Annotated[str | None, msgspec.Meta(description=(
        "AWS region; default `AWS_REGION` / `AWS_DEFAULT_REGION` / the profile's region."))] = None
    request_timeout: Annotated[float, msgspec.Meta(gt=0, description=(
        "Seconds one request may take in all (connect, send, answer) before it is retried."))] = 30.0

    def build(self, ctx: BuildContext) -> KinesisDestination:
        from ..aws import AwsClient

        client = AwsClient("kinesis", endpoint_url=self.endpoint_url, region=self.region,
                           timeout=self.request_timeout)
        return KinesisDestination(client, self.stream)


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


class KafkaDestinationConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type",
                             tag="kafka"):
    """Failure records produced to a Kafka topic (acks=all), keyed by the failed shard's id."""

    bootstrap_servers: Annotated[str, msgspec.Meta(description=(
        "`host:port[,host:port...]` of the brokers to bootstrap from."))]
    topic: Annotated[str, msgspec.Meta(description=(
        "The topic failure records are produced to, keyed by the failed shard's id."))]
    client_id: Annotated[str, msgspec.Meta(description=(
        "The client id brokers see (logs, quotas)."))] = "streamfn-on-failure"

    def build(self, ctx: BuildContext) -> KafkaDestination:
        return KafkaDestination(self.bootstrap_servers, self.topic, self.client_id)


class KafkaDestination:
    def __init__(self, bootstrap_servers: str, topic: str, client_id: str) -> None:
        self._servers, self._topic, self._client_id = bootstrap_servers, topic, client_id
        self._producer: Any = None

    async def open(self) -> None:
        from aiokafka import AIOKafkaProducer

        self._producer = AIOKafkaProducer(bootstrap_servers=self._servers, client_id=self._client_id, acks="all",
                                          max_request_size=4 * 1024 * 1024)
        await self._producer.start()

    async def send(self, failure: FailedBatch) -> None:
        key = failure.shard_id.encode()
        for document in failure_documents(failure):
            await self._producer.send_and_wait(self._topic, document, key=key)

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
