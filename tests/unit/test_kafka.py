"""Pure logic of the Kafka source: shard ids, record view, feeds and backpressure, checkpoint encoding,
the Lambda event shape and the config. The broker itself is exercised in tests/integration."""

from __future__ import annotations

import asyncio
import base64
import gc
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from streamfn.connectors.kafka import source as kafka
from streamfn.connectors.kafka.offsets import MAX_METADATA, decode_checkpoint, encode_checkpoint
from streamfn.connectors.kafka.source import (
    KafkaSource,
    KafkaSourceConfig,
    PartitionFeed,
    partition_of,
    shard_id_of,
    to_records,
)
from streamfn.errors import CheckpointError
from streamfn.lambda_shapes import kafka_event
from streamfn.protocols.checkpoint import Checkpoint
from streamfn.protocols.source import ShardInfo, StartingPosition
from streamfn.records import Batch, Position


@dataclass
class Message:
    """The fields of an aiokafka ConsumerRecord the source reads."""

    offset: int
    value: bytes | None = b"{}"
    key: bytes | None = b"k"
    topic: str = "clicks"
    partition: int = 0
    timestamp: int = 1_700_000_000_123
    timestamp_type: int = 0
    headers: tuple[tuple[str, bytes], ...] = ()


def messages(first: int, count: int, partition: int = 0) -> list[Message]:
    return [Message(offset, partition=partition) for offset in range(first, first + count)]


# ---- shard ids and the record view ----------------------------------------------------------------------------


def test_shard_ids_name_topic_and_partition_even_with_dashes_in_the_topic() -> None:
    assert shard_id_of("page-views", 3) == "page-views-3"
    assert partition_of("page-views", "page-views-3") == 3
    with pytest.raises(ValueError, match="not a partition"):
        partition_of("clicks", "page-views-3")
    with pytest.raises(ValueError, match="not a partition"):
        partition_of("clicks", "clicks-x")


def test_records_carry_offset_key_value_headers_and_timestamp() -> None:
    found = to_records("clicks-2", [
        Message(7, value=b'{"a":1}', key=b"user-\xff", partition=2, headers=(("trace", b"\x01"),), timestamp_type=1),
        Message(8, value=None, key=None, partition=2, timestamp=-1),
    ])
    first, second = found
    assert (first.shard_id, first.sequence, first.data) == ("clicks-2", 7, b'{"a":1}')
    assert first.arrival_time == 1_700_000_000.123
    assert first.partition_key == "user-\ufffd"  # undecodable bytes are replaced, never an error
    assert first.attributes == {"topic": "clicks", "partition": 2, "key": b"user-\xff",
                                "headers": (("trace", b"\x01"),), "timestamp_type": "LOG_APPEND_TIME"}
    assert (second.partition_key, second.data, second.arrival_time) == ("", b"", 0.0)
    assert second.attributes is not None and second.attributes["key"] is None


def test_record_attributes_read_like_the_dict_they_replace_and_cost_the_collector_nothing() -> None:
    (record,) = to_records("clicks-2", [Message(7, value=b"{}", key=b"k", partition=2)])
    attributes = record.attributes
    assert isinstance(attributes, Mapping) and not gc.is_tracked(attributes)
    expected = {"topic": "clicks", "partition": 2, "key": b"k", "headers": (), "timestamp_type": "CREATE_TIME"}
    assert dict(attributes) == expected and attributes == expected and len(attributes) == 5
    assert list(attributes) == list(expected) and list(attributes.items()) == list(expected.items())
    assert attributes.get("topic") == "clicks" and attributes.get("nope", 1) == 1 and "key" in attributes
    with pytest.raises(KeyError):
        attributes["nope"]
    event: dict[str, object] = {"data": 1}
    event.update(attributes)  # what content filters do
    assert event == {"data": 1, **expected}


# ---- the per-partition feed -----------------------------------------------------------------------------------


async def test_a_feed_hands_out_each_offset_once_and_in_order() -> None:
    feed = PartitionFeed("clicks", 0, capacity=100)
    feed.put(messages(0, 5))  # before the reader positioned it: nothing is kept
    assert feed.size == 0
    feed.reset(10)
    feed.put(messages(5, 10))  # a stale fetch from before the seek: only 10..14 are new
    feed.put(messages(15, 3))
    assert feed.size == 8 and feed.arrived.is_set()
    assert [r.sequence for r in feed.take(6)] == [10, 11, 12, 13, 14, 15]
    feed.put(messages(12, 4))  # already handed out, or already queued: dropped
    assert [r.sequence for r in feed.take(100)] == [16, 17]
    assert feed.size == 0 and not feed.arrived.is_set()


class FakeConsumer:
    """Stands in for AIOKafkaConsumer: hands out a backlog per partition, ten records per partition and
    call, only for the partitions asked for (the rest stay buffered, as in aiokafka); records pauses."""

    def __init__(self, backlog: dict[Any, list[Message]]) -> None:
        self.backlog = backlog
        self.paused_tps: set[Any] = set()

    async def getmany(self, *partitions: Any, timeout_ms: int = 0, max_records: int | None = None) -> Any:
        await asyncio.sleep(0.002)
        answer = {}
        for tp, pending in self.backlog.items():
            if tp in self.paused_tps or (partitions and tp not in partitions) or not pending:
                continue
            answer[tp], self.backlog[tp] = pending[:10], pending[10:]
        return answer

    def pause(self, *tps: Any) -> None:
        self.paused_tps.update(tps)

    def resume(self, *tps: Any) -> None:
        self.paused_tps.difference_update(tps)

    def seek(self, tp: Any, offset: int) -> None:
        pass

    async def beginning_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return dict.fromkeys(tps, 0)


def source_with(consumer: FakeConsumer, capacity: int) -> KafkaSource:
    config = KafkaSourceConfig(bootstrap_servers="127.0.0.1:1", topic="clicks", group_id="g",
                               queue_max_records=capacity)
    source = KafkaSource(config)
    source._consumer = consumer
    return source


async def test_a_shard_that_stops_reading_gets_its_partition_paused_and_the_others_keep_flowing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kafka, "PAUSE_AFTER", 0.05)
    consumer = FakeConsumer({("clicks", 0): messages(0, 400, 0), ("clicks", 1): messages(0, 400, 1)})
    source = source_with(consumer, capacity=20)
    stuck = source.reader(ShardInfo("clicks-0"), None, StartingPosition())
    flowing = source.reader(ShardInfo("clicks-1"), None, StartingPosition())
    assert consumer.paused_tps == {("clicks", 0), ("clicks", 1)}  # nothing fetched before a reader sought
    fetch = asyncio.create_task(source.fetch())
    try:
        await stuck.read(1, 0.5)  # positions partition 0, then never reads again (its batch "retries")
        got: list[int] = []
        while len(got) < 300:
            got.extend(r.sequence for r in (await flowing.read(50, 0.5)).records)
        assert got[:300] == list(range(300))
        assert ("clicks", 0) in consumer.paused_tps  # full for longer than PAUSE_AFTER
        assert ("clicks", 1) not in consumer.paused_tps
        assert 20 <= stuck._feed.size <= 40  # bounded: capacity plus at most one fetch
        # The stuck shard recovers: draining half its feed resumes the partition, in order.
        resumed = [r.sequence for r in (await stuck.read(30, 0.5)).records]
        assert resumed == list(range(1, 1 + len(resumed)))
        assert ("clicks", 0) not in consumer.paused_tps
    finally:
        fetch.cancel()
        await asyncio.gather(fetch, return_exceptions=True)


# ---- checkpoints as offsets + metadata --------------------------------------------------------------------------


def test_a_checkpoint_is_the_next_offset_with_its_extras_in_the_metadata() -> None:
    checkpoint = Checkpoint(position=Position(41), pending=((Position(42), Position(60)),), window_state=b"\x00w")
    encoded = encode_checkpoint(checkpoint)
    assert encoded is not None
    offset, metadata = encoded
    assert offset == 42
    assert decode_checkpoint(offset, metadata) == checkpoint


def test_a_plain_checkpoint_commits_no_metadata() -> None:
    assert encode_checkpoint(Checkpoint(position=Position(9))) == (10, "")
    assert decode_checkpoint(10, "") == Checkpoint(position=Position(9))


def test_pending_before_any_progress_commits_the_batch_start() -> None:
    checkpoint = Checkpoint(pending=((Position(0), Position(9)),))
    encoded = encode_checkpoint(checkpoint)
    assert encoded is not None and encoded[0] == 0
    back = decode_checkpoint(*encoded)
    assert back.position == Position(-1) and back.pending == checkpoint.pending  # reading restarts at offset 0


def test_nothing_to_commit_without_position_or_pending() -> None:
    assert encode_checkpoint(Checkpoint()) is None


def test_metadata_from_other_tools_is_ignored() -> None:
    assert decode_checkpoint(5, "committed by kafka-consumer-groups") == Checkpoint(position=Position(4))


def test_a_window_state_too_large_for_the_broker_is_refused() -> None:
    with pytest.raises(CheckpointError, match="exceeds"):
        encode_checkpoint(Checkpoint(position=Position(1), window_state=b"x" * MAX_METADATA))


# ---- Lambda's Kafka event ---------------------------------------------------------------------------------------


def test_the_lambda_event_groups_by_topic_partition_with_base64_and_byte_array_headers() -> None:
    records = to_records("clicks-3", [Message(5, value=b"hi", key=b"k1", partition=3, headers=(("h", b"ab"),)),
                                      Message(6, value=b"yo", key=None, partition=3)])
    event = kafka_event(Batch("clicks-3", records), "b1:9092,b2:9092")
    assert event["eventSource"] == "aws:kafka" and event["bootstrapServers"] == "b1:9092,b2:9092"
    first, second = event["records"]["clicks-3"]
    assert first == {"topic": "clicks", "partition": 3, "offset": 5, "timestamp": 1_700_000_000_123,
                     "timestampType": "CREATE_TIME", "value": base64.b64encode(b"hi").decode(),
                     "key": base64.b64encode(b"k1").decode(), "headers": [{"h": [97, 98]}]}
    assert "key" not in second and second["headers"] == []


# ---- config -------------------------------------------------------------------------------------------------


def test_the_config_reads_from_a_pipeline_table_and_passes_security_settings_through() -> None:
    config = msgspec.convert({"type": "kafka", "bootstrap_servers": "k:9093", "topic": "clicks", "group_id": "g",
                              "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                              "sasl_plain_username": "u", "sasl_plain_password": "p"}, KafkaSourceConfig)
    options = config.consumer_options()
    assert options["enable_auto_commit"] is False
    assert (options["security_protocol"], options["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("u", "p")
    assert options["ssl_context"] is not None


@pytest.mark.parametrize("fields", [
    {"starting_position": "at_timestamp"},
    {"session_timeout_ms": 3000, "heartbeat_interval_ms": 3000},
    {"unknown": 1},
])
def test_bad_configs_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"type": "kafka", "bootstrap_servers": "k:9092", "topic": "t", "group_id": "g", **fields},
                        KafkaSourceConfig)


def test_the_source_start_overrides_the_pipeline_start() -> None:
    source = source_with(FakeConsumer({}), capacity=10)
    assert source._starting(StartingPosition("latest")) == StartingPosition("latest")
    override = KafkaSource(msgspec.structs.replace(source.config, starting_position="earliest"))
    assert override._starting(StartingPosition("latest")) == StartingPosition("trim_horizon")


def test_the_on_failure_destination_connects_as_the_source_does(tmp_path: Path) -> None:
    """A pipeline on a secured cluster writes its failure records over TLS and SASL too."""
    from streamfn.components import BuildContext
    from streamfn.config import load_pipeline
    from streamfn.connectors.kafka.destination import KafkaDestinationConfig
    from streamfn.errors import ConfigError

    fields = {"bootstrap_servers": "k:9093", "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256",
              "sasl_plain_username": "u", "sasl_plain_password": "p"}
    source = msgspec.convert({"type": "kafka", "topic": "clicks", "group_id": "g", **fields}, KafkaSourceConfig)
    destination = msgspec.convert({"type": "kafka", "topic": "failures", **fields}, KafkaDestinationConfig)
    consumer, producer = source.consumer_options(), destination.producer_options()
    shared = ("bootstrap_servers", "security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password")
    assert {k: producer[k] for k in shared} == {k: consumer[k] for k in shared}
    assert producer["ssl_context"] is not None and producer["acks"] == "all"

    certifi = pytest.importorskip("certifi")
    (tmp_path / "ca.pem").write_bytes(Path(certifi.where()).read_bytes())
    tls = msgspec.convert({"type": "kafka", "topic": "failures", "bootstrap_servers": "k:9093",
                           "security_protocol": "SSL", "ssl_cafile": "ca.pem"}, KafkaDestinationConfig)
    tls.build(BuildContext("p", tmp_path, tmp_path))  # the CA file is found next to the config, not in the cwd
    with pytest.raises(ConfigError, match=r"elsewhere/ca\.pem is not a file") as info:
        tls.build(BuildContext("p", tmp_path / "elsewhere", tmp_path))
    assert info.value.field == "ssl_cafile"

    config = tmp_path / "p.toml"
    config.write_text("name = 'p'\nhandler = 'h:handle'\n[source]\ntype = 'local'\nstream = 's'\n[on_failure]\n"
                      "type = 'kafka'\nbootstrap_servers = 'k:9093'\ntopic = 'f'\nsecurity_protocol = 'SSL'\n"
                      "ssl_certfile = 'client.pem'\n")
    with pytest.raises(ConfigError) as loading:
        load_pipeline(config)
    assert (loading.value.file, loading.value.field) == (str(config), "on_failure.ssl_certfile")
