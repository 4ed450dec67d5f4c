"""The commit-metadata decision as pure logic: what a coordinator answer means, refuse or accept,
and tumbling windows refused with ``accept``. The positive case (a broker that keeps metadata)
is tested here with fake coordinator answers: no Kafka-protocol broker that keeps commit metadata
runs on this machine (Tansu drops it; tests/integration/test_kafka_commit_metadata.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.structs import OffsetAndMetadata
from hypothesis import given
from hypothesis import strategies as st

from streamfn.config import load_pipeline
from streamfn.connectors.kafka.metadata_probe import CommitMetadataLost, decide, kept, probe_group
from streamfn.connectors.kafka.offsets import KafkaCheckpointStoreConfig
from streamfn.engine.pipeline import AllShardsAssigner
from streamfn.errors import ConfigError
from streamfn.metrics import StatsCollector, build_registry
from streamfn.testing.memory import MemoryCheckpointStore

PIPELINE = ('name = "p"\nhandler = "h:f"\ntumbling_window = 60\n'
            '[source]\ntype = "kafka"\nbootstrap_servers = "b:9092"\ntopic = "t"\ngroup_id = "g"\n')


@given(sent=st.text(max_size=40), answered=st.text(max_size=40), offset=st.integers(-1, 10))
def test_kept_only_when_the_coordinator_answers_what_was_sent(sent: str, answered: str, offset: int) -> None:
    assert kept(sent, OffsetAndMetadata(offset, answered)) == (offset >= 0 and answered == sent)
    assert kept(sent, None) is False


def test_a_broker_that_keeps_metadata_runs_under_either_setting() -> None:
    sent = "streamfn-probe:1"
    metadata_kept = kept(sent, OffsetAndMetadata(0, sent))
    assert decide(metadata_kept, "refuse", "g") is False
    assert decide(metadata_kept, "accept", "g") is False


def test_a_broker_that_drops_metadata_is_refused_unless_accepted() -> None:
    metadata_kept = kept("streamfn-probe:1", OffsetAndMetadata(0, ""))  # Tansu's answer
    with pytest.raises(CommitMetadataLost) as refused:
        decide(metadata_kept, "refuse", "orders")
    assert "'orders'" in str(refused.value)
    assert '[checkpoints] without_commit_metadata = "accept"' in str(refused.value)
    assert decide(metadata_kept, "accept", "orders") is True


def test_the_probe_never_uses_the_pipelines_group() -> None:
    assert probe_group("orders") == "orders.streamfn-metadata-probe"


def test_the_setting_reaches_the_store() -> None:
    assert KafkaCheckpointStoreConfig().store_options()["without_commit_metadata"] == "refuse"
    accept = KafkaCheckpointStoreConfig(without_commit_metadata="accept")
    assert accept.store_options()["without_commit_metadata"] == "accept"


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    return load_pipeline(path, env={})


def test_tumbling_windows_are_refused_when_lost_metadata_is_accepted(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tumbling_window.*holds the window state"):
        load(tmp_path, PIPELINE + '[checkpoints]\ntype = "kafka"\nwithout_commit_metadata = "accept"\n')
    # refused at start on a broker that drops metadata instead (the store probes it)
    assert load(tmp_path, PIPELINE) is not None
    assert load(tmp_path, PIPELINE + '[checkpoints]\ntype = "kafka"\n') is not None


class AcceptedLoss(MemoryCheckpointStore):
    def at_least_once(self) -> str | None:
        return "the broker drops offset commit metadata"


def test_an_accepted_loss_is_a_metric() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    pipelines: Any = [SimpleNamespace(name=name, runners={}, shard_stats={}, assigner=AllShardsAssigner(None),  # type: ignore[arg-type]
                                      store=store) for name, store in (("lossy", AcceptedLoss()),
                                                                       ("exact", MemoryCheckpointStore()))]
    text = generate_latest(build_registry(StatsCollector(lambda: pipelines), process=False)).decode()
    values = {s.labels["pipeline"]: s.value for family in text_string_to_metric_families(text)
              for s in family.samples if s.name == "streamfn_output_at_least_once"}
    assert values == {"lossy": 1.0, "exact": 0.0}
