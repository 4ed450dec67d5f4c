"""Kits for the contract suites: each makes one kind of part on its real server and reads back what
it stored, so the suites themselves speak only the protocols (Source, Sink, Destination).

Servers come from the session fixtures in tests/conftest.py (one per test session, shared by every
module); each kit uses names of its own, so kits never see each other's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamfn.components import BuildContext
from streamfn.protocols.source import Source
from streamfn.records import Record
from tests.integration.aws_support import client, create_stream, unique, wait_active

CONTEXT = BuildContext(pipeline="contract", config_dir=Path("."), state_dir=Path("."))
SOURCE_KINDS = ["memory", "local", "kinesis-mock", "kinesalite", "dynamodb_streams", "kafka"]


def document(number: int) -> bytes:
    return orjson.dumps({"n": number})


class SourceKit:
    """A stream of one kind on its server: write numbered records, open a Source over it."""

    #: At least this many shards are listed (the suite checks records spread over them).
    min_shards = 1
    #: ThrottleProxy target of the source's read request; None for a source with no AWS server.
    throttle: str | None = None
    #: The server can split a shard (closing it, with two children) so the suite sees shard ends.
    splits = False
    endpoint = ""

    def __init__(self) -> None:
        self.sources: list[Source] = []

    async def write(self, numbers: Iterable[int]) -> None:
        """Append ``{"n": number}`` records in this order (each kind spreads them over its shards)."""
        raise NotImplementedError

    def build(self, endpoint: str | None = None) -> Source:
        raise NotImplementedError

    async def open_source(self, endpoint: str | None = None) -> Source:
        source = self.build(endpoint)
        self.sources.append(source)
        await source.open()
        return source

    def number(self, record: Record) -> int:
        return int(record.json()["n"])

    async def split(self) -> None:
        """Split one shard in two (only where ``splits``)."""
        raise NotImplementedError

    async def cleanup(self) -> None:
        for source in self.sources:
            with contextlib.suppress(Exception):
                await source.close()


class LocalKit(SourceKit):
    min_shards = 3

    def __init__(self, folder: Path) -> None:
        from streamfn.connectors.local.log import LocalLog

        super().__init__()
        self.path = folder / "log.sqlite3"
        self.stream = unique("contract")
        log = LocalLog(self.path)
        try:
            log.create_stream(self.stream, 3)
        finally:
            log.close()

    async def write(self, numbers: Iterable[int]) -> None:
        from streamfn.connectors.local.log import LocalLog

        log = LocalLog(self.path)
        try:
            log.append(self.stream, [(f"k{n}", document(n)) for n in numbers])
        finally:
            log.close()

    def build(self, endpoint: str | None = None) -> Source:
        from streamfn.connectors.local.source import LocalSource

        return LocalSource(self.path, self.stream, 3)


class KinesisKit(SourceKit):
    min_shards = 2
    throttle = "Kinesis_20131202.GetRecords"

    def __init__(self, endpoint: str) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.stream = unique("contract")
        self.created = False

    async def write(self, numbers: Iterable[int]) -> None:
        async with client("kinesis", self.endpoint) as kinesis:
            if not self.created:
                await create_stream(kinesis, self.stream, 2)
                self.created = True
            entries = [{"PartitionKey": f"k{n}", "Data": document(n)} for n in numbers]
            answer = await kinesis.put_records(StreamName=self.stream, Records=entries)
            assert answer.get("FailedRecordCount", 0) == 0, answer

    async def split(self) -> None:
        async with client("kinesis", self.endpoint) as kinesis:
            shard = (await kinesis.list_shards(StreamName=self.stream))["Shards"][0]
            low = int(shard["HashKeyRange"]["StartingHashKey"])
            high = int(shard["HashKeyRange"]["EndingHashKey"])
            await kinesis.split_shard(StreamName=self.stream, ShardToSplit=shard["ShardId"],
                                      NewStartingHashKey=str((low + high) // 2))
            await wait_active(kinesis, self.stream)

    def build(self, endpoint: str | None = None) -> Source:
        from streamfn.connectors.kinesis.source import KinesisSourceConfig

        config = KinesisSourceConfig(stream=self.stream, endpoint_url=endpoint or self.endpoint, backoff_initial=0.01,
                                     backoff_max=0.05, idle_interval=0.02, max_reads_per_second=100.0)
        return config.build(CONTEXT)


class DynamoDBStreamsKit(SourceKit):
    throttle = "DynamoDBStreams_20120810.GetRecords"

    def __init__(self, endpoint: str) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.table = unique("contract")
        self.created = False

    async def write(self, numbers: Iterable[int]) -> None:
        async with client("dynamodb", self.endpoint) as ddb:
            if not self.created:
                await ddb.create_table(
                    TableName=self.table, BillingMode="PAY_PER_REQUEST",
                    AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                    KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                    StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"},
                )
                self.created = True
            for n in numbers:
                await ddb.put_item(TableName=self.table, Item={"id": {"S": f"i{n}"}, "n": {"N": str(n)}})

    def build(self, endpoint: str | None = None) -> Source:
        from streamfn.connectors.dynamodb_streams.source import DynamoDBStreamsSourceConfig

        config = DynamoDBStreamsSourceConfig(table=self.table, endpoint_url=endpoint or self.endpoint,
                                             idle_interval=0.02,
                                             max_reads_per_second=100.0, backoff_initial=0.01)
        return config.build(CONTEXT)

    def number(self, record: Record) -> int:
        return int(record.json()["NewImage"]["n"]["N"])


class KafkaKit(SourceKit):
    """A topic of 3 partitions, read through a source whose consumer is assigned every partition by
    hand (no group join: the suite tests reading, tests/integration/test_kafka_group.py the group)."""

    min_shards = 3

    def __init__(self, bootstrap: str) -> None:
        super().__init__()
        self.bootstrap = bootstrap
        self.topic = ""
        self.fetchers: list[asyncio.Task[None]] = []

    async def write(self, numbers: Iterable[int]) -> None:
        from aiokafka import AIOKafkaProducer

        from tests.integration.kafka_util import create_topic

        if not self.topic:
            self.topic = await create_topic(self.bootstrap, 3, prefix="contract")
        # One record per produce request: Tansu reports a batch's end offset as its first record's
        # + 1 (shared/reference/test-servers.md), which would put ``latest`` inside the batch.
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            for n in numbers:
                await producer.send_and_wait(self.topic, document(n), key=f"k{n}".encode(), partition=n % 3)
        finally:
            await producer.stop()

    def build(self, endpoint: str | None = None) -> Source:
        from streamfn.connectors.kafka.source import KafkaSource, KafkaSourceConfig

        return KafkaSource(KafkaSourceConfig(bootstrap_servers=self.bootstrap, topic=self.topic,
                                             group_id=unique("contract"), fetch_max_wait_ms=20))

    async def open_source(self, endpoint: str | None = None) -> Source:
        from aiokafka import TopicPartition

        from streamfn.connectors.kafka.source import KafkaSource

        source = await super().open_source(endpoint)
        assert isinstance(source, KafkaSource)
        source.consumer.assign([TopicPartition(self.topic, p) for p in range(3)])
        self.fetchers.append(asyncio.create_task(source.fetch()))
        return source

    async def cleanup(self) -> None:
        for task in self.fetchers:
            task.cancel()
        await asyncio.gather(*self.fetchers, return_exceptions=True)
        await super().cleanup()


class MemorySourceKit(SourceKit):
    """streamfn.testing's MemorySource: its records live in the object, so every open is of that one."""

    min_shards = 3

    def __init__(self) -> None:
        from streamfn.testing import MemorySource

        super().__init__()
        self.source = MemorySource("contract", 3)

    async def write(self, numbers: Iterable[int]) -> None:
        self.source.extend((f"k{n}", document(n)) for n in numbers)

    def build(self, endpoint: str | None = None) -> Source:
        return self.source


async def source_kit(kind: str, request: pytest.FixtureRequest, folder: Path) -> SourceKit:
    if kind == "memory":
        return MemorySourceKit()
    if kind == "local":
        return LocalKit(folder)
    if kind in ("kinesis-mock", "kinesalite"):
        request.getfixturevalue("aws_env")
        fixture = "kinesis_endpoint" if kind == "kinesis-mock" else "kinesalite_endpoint"
        made = KinesisKit(request.getfixturevalue(fixture))
        made.splits = kind == "kinesis-mock"  # kinesalite lists no ChildShards
        return made
    if kind == "dynamodb_streams":
        request.getfixturevalue("aws_env")
        return DynamoDBStreamsKit(request.getfixturevalue("moto_endpoint"))
    if kind == "kafka":
        return KafkaKit(request.getfixturevalue("kafka_bootstrap"))
    raise ValueError(kind)


def json_lines(body: bytes) -> list[Any]:
    return [json.loads(line) for line in body.splitlines() if line]


# ---- sinks ------------------------------------------------------------------------------------------------------

SINK_KINDS = ["memory", "stdout", "local", "s3", "dynamodb"]


class SinkKit:
    """A sink of one kind on its server, and what it stored, read back without streamfn."""

    #: Items land in objects whose lines keep the batch's order (object stores); else items are
    #: stored by key and a later item of one key replaces an earlier one (tables).
    objects = True
    #: A batch written again replaces itself; False for a stream of lines (stdout) that prints it again.
    replays_once = True
    #: ThrottleProxy target of the sink's write request and the AWS error it answers with; None
    #: for a sink with no server (the local sink's transient failure is a full disk).
    throttle: tuple[str, int, str] | None = None
    endpoint = ""

    def build(self, endpoint: str | None = None) -> Any:
        raise NotImplementedError

    async def prepare(self) -> None:
        """Create what the sink writes into."""

    async def stored(self) -> list[list[Any]]:
        """The items of each stored object (objects) or of the table as one list (tables)."""
        raise NotImplementedError


class LocalSinkKit(SinkKit):
    def __init__(self, folder: Path) -> None:
        self.root = folder / "out"

    def build(self, endpoint: str | None = None) -> Any:
        from streamfn.connectors.local.sink import LocalSink

        return LocalSink(self.root)

    async def stored(self) -> list[list[Any]]:
        return [json_lines(path.read_bytes()) for path in sorted(self.root.rglob("*")) if path.is_file()]


class S3SinkKit(SinkKit):
    throttle = ("", 503, "SlowDown")

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.bucket = unique("contract")

    def build(self, endpoint: str | None = None) -> Any:
        from streamfn.connectors.s3.sink import S3SinkConfig

        config = S3SinkConfig(bucket=self.bucket, endpoint_url=endpoint or self.endpoint)
        return config.build(CONTEXT)

    async def prepare(self) -> None:
        async with client("s3", self.endpoint) as s3:
            await s3.create_bucket(Bucket=self.bucket)

    async def stored(self) -> list[list[Any]]:
        out = []
        async with client("s3", self.endpoint) as s3:
            listed = await s3.list_objects_v2(Bucket=self.bucket)
            for entry in sorted(listed.get("Contents", []), key=lambda e: e["Key"]):
                answer = await s3.get_object(Bucket=self.bucket, Key=entry["Key"])
                out.append(json_lines(await answer["Body"].read()))
        return out


class DynamoDBSinkKit(SinkKit):
    objects = False
    throttle = ("DynamoDB_20120810.BatchWriteItem", 400, "ProvisionedThroughputExceededException")

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.table = unique("contract")

    def build(self, endpoint: str | None = None) -> Any:
        from streamfn.connectors.dynamodb.sink import DynamoDBSinkConfig

        return DynamoDBSinkConfig(table=self.table, endpoint_url=endpoint or self.endpoint).build(CONTEXT)

    async def prepare(self) -> None:
        async with client("dynamodb", self.endpoint) as ddb:
            await ddb.create_table(TableName=self.table, BillingMode="PAY_PER_REQUEST",
                                   AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                                   KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])

    async def stored(self) -> list[list[Any]]:
        from streamfn.connectors.dynamodb.dynamodb_json import item_from_dynamodb

        async with client("dynamodb", self.endpoint) as ddb:
            items = (await ddb.scan(TableName=self.table))["Items"]
        return [sorted((item_from_dynamodb(item) for item in items), key=lambda item: str(item["id"]))]


class MemorySinkKit(SinkKit):
    def __init__(self) -> None:
        from streamfn.testing import MemorySink

        self.sink = MemorySink()

    def build(self, endpoint: str | None = None) -> Any:
        return self.sink

    async def stored(self) -> list[list[Any]]:
        return [list(batch.items) for batch in self.sink.batches]


class StdoutSinkKit(SinkKit):
    """The stdout sink, its lines captured at the file descriptor: one stream holding every write."""

    replays_once = False

    def __init__(self, capture: pytest.CaptureFixture[str]) -> None:
        self.capture = capture
        self.lines: list[Any] = []

    def build(self, endpoint: str | None = None) -> Any:
        from streamfn.connectors.stdout.sink import StdoutSinkConfig

        return StdoutSinkConfig().build(CONTEXT)

    async def stored(self) -> list[list[Any]]:
        self.lines += json_lines(self.capture.readouterr().out.encode())
        return [self.lines] if self.lines else []


def sink_kit(kind: str, request: pytest.FixtureRequest, folder: Path) -> SinkKit:
    if kind == "memory":
        return MemorySinkKit()
    if kind == "stdout":
        return StdoutSinkKit(request.getfixturevalue("capfd"))
    if kind == "local":
        return LocalSinkKit(folder)
    request.getfixturevalue("aws_env")
    endpoint = request.getfixturevalue("moto_endpoint")
    if kind == "s3":
        return S3SinkKit(endpoint)
    if kind == "dynamodb":
        return DynamoDBSinkKit(endpoint)
    raise ValueError(kind)


# ---- on-failure destinations -------------------------------------------------------------------------------------

DESTINATION_KINDS = ["memory", "local", "s3", "local_log", "kinesis", "kafka", "sqs", "sqs_fifo", "sns"]


class DestinationKit:
    """An on-failure destination of one kind on its server, and the failure documents it holds."""

    #: A failure sent twice is stored once (keyed by its batch); streams append each send.
    idempotent = True
    #: ThrottleProxy target and AWS error for the destination's write; None without a server to throttle.
    throttle: tuple[str, int, str] | None = None
    endpoint = ""

    def build(self, endpoint: str | None = None) -> Any:
        raise NotImplementedError

    async def prepare(self) -> None:
        """Create what the destination writes into."""

    async def documents(self) -> list[Any]:
        """Every failure document stored, decoded from JSON."""
        raise NotImplementedError


class LocalDestinationKit(DestinationKit):
    def __init__(self, folder: Path) -> None:
        self.root = folder / "failures"

    def build(self, endpoint: str | None = None) -> Any:
        from streamfn.connectors.local.destination import LocalDestinationConfig

        return LocalDestinationConfig(path=str(self.root)).build(CONTEXT)

    async def documents(self) -> list[Any]:
        return [orjson.loads(path.read_bytes()) for path in sorted(self.root.rglob("*.json"))]


class S3DestinationKit(DestinationKit):
    throttle = ("", 503, "SlowDown")

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.bucket = unique("contract")

    def build(self, endpoint: str | None = None) -> Any:
        from streamfn.connectors.s3.destination import S3DestinationConfig

        return S3DestinationConfig(bucket=self.bucket, prefix="failed/", endpoint_url=endpoint or self.endpoint)\
            .build(CONTEXT)

    async def prepare(self) -> None:
        async with client("s3", self.endpoint) as s3:
            await s3.create_bucket(Bucket=self.bucket)

    async def documents(self) -> list[Any]:
        out = []
        async with client("s3", self.endpoint) as s3:
            listed = await s3.list_objects_v2(Bucket=self.bucket)
            for entry in listed.get("Contents", []):
                assert entry["Key"].startswith("failed/aws/lambda/")
                out.append(orjson.loads(await (await s3.get_object(Bucket=self.bucket, Key=entry["Key"]))["Body"]
                                        .read()))
        return out


class LocalLogDestinationKit(DestinationKit):
    idempotent = False

    def __init__(self, folder: Path) -> None:
        self.path = folder / "failures.sqlite3"

    def build(self, endpoint: str | None = None) -> Any:
        from streamfn.connectors.local.log_destination import LocalLogDestinationConfig

        return LocalLogDestinationConfig(stream="failures", shards=2, path=str(self.path)).build(CONTEXT)

    async def documents(self) -> list[Any]:
        from streamfn.connectors.local.log import LocalLog

        log = LocalLog(self.path)
        try:
            return [record.json() for shard in log.shard_ids("failures")
                    for record in log.read("failures", shard, 0, 1000)]
        finally:
            log.close()


class KinesisDestinationKit(DestinationKit):
    idempotent = False
    throttle = ("Kinesis_20131202.PutRecord", 400, "ProvisionedThroughputExceededException")

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.stream = unique("failures")

    def build(self, endpoint: str | None = None) -> Any:
        from streamfn.connectors.kinesis.destination import KinesisDestinationConfig

        return KinesisDestinationConfig(stream=self.stream, endpoint_url=endpoint or self.endpoint).build(CONTEXT)

    async def prepare(self) -> None:
        async with client("kinesis", self.endpoint) as kinesis:
            await create_stream(kinesis, self.stream, 1)

    async def documents(self) -> list[Any]:
        async with client("kinesis", self.endpoint) as kinesis:
            shard = (await kinesis.list_shards(StreamName=self.stream))["Shards"][0]["ShardId"]
            iterator = (await kinesis.get_shard_iterator(StreamName=self.stream, ShardId=shard,
                                                         ShardIteratorType="TRIM_HORIZON"))["ShardIterator"]
            answer = await kinesis.get_records(ShardIterator=iterator)
        return [orjson.loads(record["Data"]) for record in answer["Records"]]


class KafkaDestinationKit(DestinationKit):
    idempotent = False

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.topic = ""

    def build(self, endpoint: str | None = None) -> Any:
        from streamfn.connectors.kafka.destination import KafkaDestinationConfig

        return KafkaDestinationConfig(bootstrap_servers=self.bootstrap, topic=self.topic).build(CONTEXT)

    async def prepare(self) -> None:
        from tests.integration.kafka_util import create_topic

        self.topic = await create_topic(self.bootstrap, 1, prefix="failures")

    async def documents(self) -> list[Any]:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(self.topic, 0)
            consumer.assign([tp])
            consumer.seek(tp, 0)
            end = (await consumer.end_offsets([tp]))[tp]
            messages: list[Any] = []
            async with asyncio.timeout(10):
                while not messages or messages[-1].offset + 1 < end:
                    messages += (await consumer.getmany(tp, timeout_ms=500)).get(tp, [])
            return [orjson.loads(message.value) for message in messages]
        finally:
            await consumer.stop()


class MemoryDestinationKit(DestinationKit):
    idempotent = False  # a list of what was sent, as the stream destinations append

    def __init__(self) -> None:
        from streamfn.testing import MemoryDestination

        self.destination = MemoryDestination()

    def build(self, endpoint: str | None = None) -> Any:
        return self.destination

    async def documents(self) -> list[Any]:
        documents: list[Any] = orjson.loads(orjson.dumps(self.destination.documents))
        return documents


class SqsDestinationKit(DestinationKit):
    """An SQS queue (standard: each send arrives; FIFO: a send repeated within 5 minutes is dropped by
    its deduplication id), or an SNS topic read through a queue subscribed to it with raw delivery."""

    throttle: tuple[str, int, str] | None = ("AmazonSQS.SendMessage", 400, "ThrottlingException")

    def __init__(self, endpoint: str, *, fifo: bool = False, topic: bool = False) -> None:
        self.endpoint = endpoint
        self.name = unique("failures") + (".fifo" if fifo else "")
        self.idempotent = fifo
        self.topic = topic
        if topic:
            self.throttle = None  # SNS speaks the query protocol: no target to throttle by
        self.url = self.topic_arn = ""
        self.received: list[Any] = []

    def build(self, endpoint: str | None = None) -> Any:
        from streamfn.connectors.sns.destination import SnsDestinationConfig
        from streamfn.connectors.sqs.destination import SqsDestinationConfig

        if self.topic:
            return SnsDestinationConfig(topic_arn=self.topic_arn, endpoint_url=endpoint or self.endpoint)\
                .build(CONTEXT)
        return SqsDestinationConfig(queue=self.name, endpoint_url=endpoint or self.endpoint).build(CONTEXT)

    async def prepare(self) -> None:
        attributes = {"FifoQueue": "true"} if self.name.endswith(".fifo") else {}
        async with client("sqs", self.endpoint) as sqs:
            self.url = (await sqs.create_queue(QueueName=self.name, Attributes=attributes))["QueueUrl"]
            if not self.topic:
                return
            queue_arn = (await sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])
                         )["Attributes"]["QueueArn"]
        async with client("sns", self.endpoint) as sns:
            self.topic_arn = (await sns.create_topic(Name=self.name))["TopicArn"]
            await sns.subscribe(TopicArn=self.topic_arn, Protocol="sqs", Endpoint=queue_arn,
                                Attributes={"RawMessageDelivery": "true"})

    async def documents(self) -> list[Any]:
        async with client("sqs", self.endpoint) as sqs:
            while True:
                answer = await sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
                messages = answer.get("Messages", [])
                if not messages:
                    return self.received
                for message in messages:
                    self.received.append(orjson.loads(message["Body"]))
                    await sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])


def destination_kit(kind: str, request: pytest.FixtureRequest, folder: Path) -> DestinationKit:
    if kind == "memory":
        return MemoryDestinationKit()
    if kind == "local":
        return LocalDestinationKit(folder)
    if kind == "local_log":
        return LocalLogDestinationKit(folder)
    if kind == "kafka":
        return KafkaDestinationKit(request.getfixturevalue("kafka_bootstrap"))
    request.getfixturevalue("aws_env")
    if kind == "s3":
        return S3DestinationKit(request.getfixturevalue("moto_endpoint"))
    if kind == "kinesis":
        return KinesisDestinationKit(request.getfixturevalue("kinesis_endpoint"))
    if kind in ("sqs", "sqs_fifo", "sns"):
        return SqsDestinationKit(request.getfixturevalue("moto_endpoint"), fifo=kind == "sqs_fifo", topic=kind == "sns")
    raise ValueError(kind)
