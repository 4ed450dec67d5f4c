"""On-failure records produced to a Kafka topic, keyed by the failed shard's id."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from ...protocols.destination import DestinationConfig, FailedBatch
from ..shared.failure_documents import failure_documents
from .source import KafkaSourceConfig

if TYPE_CHECKING:
    from ...components import BuildContext
    from ...protocols.source import SourceConfig


class KafkaDestinationConfig(DestinationConfig, kw_only=True, tag="kafka"):
    """Failure records produced to a Kafka topic (acks=all), keyed by the failed shard's id."""

    bootstrap_servers: Annotated[str, msgspec.Meta(description=(
        "`host:port[,host:port...]` of the brokers to bootstrap from."))]
    topic: Annotated[str, msgspec.Meta(description=(
        "The topic failure records are produced to, keyed by the failed shard's id."))]
    client_id: Annotated[str, msgspec.Meta(description=(
        "The client id brokers see (logs, quotas)."))] = "streamfn-on-failure"

    def build(self, ctx: BuildContext) -> KafkaDestination:
        return KafkaDestination(self.bootstrap_servers, self.topic, self.client_id)

    def feeds(self, source: SourceConfig, ctx: BuildContext) -> str | None:
        same = (isinstance(source, KafkaSourceConfig) and source.topic == self.topic
                and bool(_servers(source.bootstrap_servers) & _servers(self.bootstrap_servers)))
        return "topic" if same else None


def _servers(bootstrap: str) -> set[str]:
    return {server.strip() for server in bootstrap.split(",") if server.strip()}


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
