"""The connector registry: every built-in type is registered once, the schema lists each, and a
broken third-party entry point is refused with what to do."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Any

import pytest

from streamfn import registry
from streamfn.config import json_schema
from streamfn.errors import ConfigError
from streamfn.protocols.sink import SinkConfig

BUILT_IN_TYPES = {
    "source": {"local", "kinesis", "dynamodb_streams", "kafka"},
    "sinks": {"local", "stdout", "s3", "dynamodb"},
    "checkpoints": {"local", "dynamodb", "kafka"},
    "on_failure": {"local", "local_log", "s3", "kinesis", "kafka", "sqs", "sns"},
}


def test_every_built_in_type_is_registered() -> None:
    assert {registry.type_of(c) for c in registry.source_configs()} == BUILT_IN_TYPES["source"]
    assert {registry.type_of(c) for c in registry.sink_configs()} == BUILT_IN_TYPES["sinks"]
    assert {registry.type_of(c) for c in registry.checkpoint_configs()} == BUILT_IN_TYPES["checkpoints"]
    assert {registry.type_of(c) for c in registry.destination_configs()} == BUILT_IN_TYPES["on_failure"]
    assert registry.type_of(registry.default_checkpoints()) == "local"


def _tags(schema: dict[str, Any], field: str) -> set[str]:
    pipeline = schema["$defs"]["PipelineConfig"]["properties"][field]
    options = pipeline.get("items", pipeline)
    union = next((o for o in options.get("anyOf", [options]) if "discriminator" in o), options)
    return set(union["discriminator"]["mapping"])


def test_the_schema_lists_every_registered_type() -> None:
    schema = json_schema()
    for field, types in BUILT_IN_TYPES.items():
        assert _tags(schema, field) == types, field


class _Points:
    def __init__(self, *points: EntryPoint) -> None:
        self.points = points

    def __call__(self, group: str) -> tuple[EntryPoint, ...]:
        assert group == registry.ENTRY_POINT_GROUP
        return self.points


class DuplicateLocal(SinkConfig, kw_only=True, tag="local"):
    path: str = ""


DUPLICATE = registry.Connector(name="imposter", sinks=(DuplicateLocal,))


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> Any:
    registry.connectors.cache_clear()
    yield monkeypatch
    registry.connectors.cache_clear()


def test_a_type_declared_twice_is_refused_naming_both(fresh: pytest.MonkeyPatch) -> None:
    point = EntryPoint("imposter", f"{__name__}:DUPLICATE", registry.ENTRY_POINT_GROUP)
    fresh.setattr(registry, "entry_points", _Points(point))
    with pytest.raises(ConfigError, match=r"sink of type 'local' .*local and imposter.*uninstall one"):
        registry.connectors()


def test_an_entry_point_that_is_no_connector_is_refused(fresh: pytest.MonkeyPatch) -> None:
    point = EntryPoint("odd", f"{__name__}:BUILT_IN_TYPES", registry.ENTRY_POINT_GROUP)
    fresh.setattr(registry, "entry_points", _Points(point))
    with pytest.raises(ConfigError, match=r"must name a streamfn\.registry\.Connector"):
        registry.connectors()


def test_an_entry_point_that_fails_to_import_names_its_package(fresh: pytest.MonkeyPatch) -> None:
    point = EntryPoint("gone", "streamfn_no_such_package:CONNECTOR", registry.ENTRY_POINT_GROUP)
    fresh.setattr(registry, "entry_points", _Points(point))
    with pytest.raises(ConfigError, match=r"'gone' .*failed to import.*fix or uninstall"):
        registry.connectors()
