"""On-failure records produced to a Kafka topic, keyed by the failed shard's id."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from ...protocols.destination import DestinationConfig, FailedBatch
from ..shared.failure_documents import failure_documents
from .connection import KafkaConnection
from .source import KafkaSourceConfig

if TYPE_CHECKING:
    from ...components import BuildContext
    from ...protocols.source import SourceConfig


class KafkaDestinationConfig(DestinationConfig, KafkaConnection, kw_only=True, tag="kafka"):
    """Failure records produced to a Kafka topic (acks=all), keyed by the failed shard's id, over
    plain TCP, TLS or SASL as the source reads (the same settings)."""

    bootstrap_servers: Annotated[str, msgspec.Meta(description=(
        "`host:port[,host:port...]` of the brokers to bootstrap from."))]
    topic: Annotated[str, msgspec.Meta(description=(
        "The topic failure records are produced to, keyed by the failed shard's id."))]
    client_id: Annotated[str, msgspec.Meta(description=(
        "The client id brokers see (logs, quotas)."))] = "streamfn-on-failure"

    def build(self, ctx: BuildContext) -> KafkaDestination:
        return KafkaDestination(self.topic, self.producer_options(lambda path: str(ctx.resolve(path))))

    def check(self, ctx: BuildContext) -> None:
        self.producer_options(lambda path: str(ctx.resolve(path)))  # a TLS file missing or unusable

    def producer_options(self, resolve: Callable[[str], str] = str) -> dict[str, Any]:
        """Keyword arguments for ``AIOKafkaProducer``: every write acknowledged by all in-sync replicas."""
        return {"bootstrap_servers": self.bootstrap_servers, "client_id": self.client_id, "acks": "all",
                "max_request_size": 4 * 1024 * 1024, **self.connection_options(resolve)}

    def feeds(self, source: SourceConfig, ctx: BuildContext) -> str | None:
        same = (isinstance(source, KafkaSourceConfig) and source.topic == self.topic
                and bool(_servers(source.bootstrap_servers) & _servers(self.bootstrap_servers)))
        return "topic" if same else None


def _servers(bootstrap: str) -> set[str]:
    return {server.strip() for server in bootstrap.split(",") if server.strip()}


class KafkaDestination:
    def __init__(self, topic: str, producer_options: dict[str, Any]) -> None:
        self._topic, self._options = topic, producer_options
        self._producer: Any = None

    async def open(self) -> None:
        from aiokafka import AIOKafkaProducer

        self._producer = AIOKafkaProducer(**self._options)
        await self._producer.start()

    async def send(self, failure: FailedBatch) -> None:
        key = failure.shard_id.encode()
        for document in failure_documents(failure):
            await self._producer.send_and_wait(self._topic, document, key=key)

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
