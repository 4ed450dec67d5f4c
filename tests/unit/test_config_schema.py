"""The documented schema: every field of ``streamfn schema`` explains itself, enum errors list the
allowed values, and Lambda's starting-position spellings are accepted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfn.cli import main
from streamfn.config import load_pipeline
from streamfn.errors import ConfigError

BASE = 'name = "p"\nhandler = "h:f"\n'
LOCAL = '[source]\ntype = "local"\nstream = "s"\n'
KAFKA = '[source]\ntype = "kafka"\nbootstrap_servers = "b:9092"\ntopic = "t"\ngroup_id = "g"\n'


def schema_from_cli(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["schema"]) == 0
    document: dict[str, Any] = orjson.loads(capsys.readouterr().out)
    return document


def properties(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, definition in schema["$defs"].items():
        for field, declared in definition.get("properties", {}).items():
            yield f"{name}.{field}", declared


def test_every_property_of_the_schema_has_a_description(capsys: pytest.CaptureFixture[str]) -> None:
    schema = schema_from_cli(capsys)
    found = dict(properties(schema))
    assert len(found) > 150  # every connector's config is in the document
    assert [name for name, declared in found.items() if not declared.get("description")] == []
    assert "Lambda's BatchSize" in found["BatchingConfig.max_records"]["description"]
    assert found["KinesisSourceConfig.type"]["description"].startswith("`kinesis`: ")


def test_the_schema_lists_lambdas_starting_position_spellings(capsys: pytest.CaptureFixture[str]) -> None:
    found = dict(properties(schema_from_cli(capsys)))
    assert {"TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"} <= set(found["PipelineConfig.starting_position"]["enum"])


def load(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    return load_pipeline(path, env={})


def test_an_enum_error_lists_the_allowed_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, BASE + 'interface = "aws"\n' + LOCAL)
    assert raised.value.field == "interface"
    assert "'aws'" in raised.value.message and "expected one of 'lambda', 'native'" in raised.value.message


def test_an_unknown_type_lists_the_types_of_that_place(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, BASE + LOCAL + '[[sinks]]\ntype = "local"\npath = "o"\n[[sinks]]\ntype = "s4"\n')
    assert raised.value.field == "sinks[1].type"
    listed = raised.value.message.rpartition("expected one of ")[2]
    assert sorted(listed.split(", ")) == ["'dynamodb'", "'local'", "'s3'", "'stdout'"]


def test_an_enum_inside_a_tagged_source_lists_that_sources_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, BASE + KAFKA + 'isolation_level = "dirty"\n')
    assert raised.value.field == "source.isolation_level"
    assert raised.value.message.endswith("expected one of 'read_committed', 'read_uncommitted'")


@pytest.mark.parametrize(("spelled", "meant"), [("TRIM_HORIZON", "trim_horizon"), ("LATEST", "latest")])
def test_lambdas_spellings_of_the_starting_position_are_accepted(tmp_path: Path, spelled: str, meant: str) -> None:
    loaded = load(tmp_path, BASE + f'starting_position = "{spelled}"\n' + LOCAL)
    assert loaded.config.starting_position == meant
    at = load(tmp_path, BASE + 'starting_position = "AT_TIMESTAMP"\nstarting_timestamp = 1.0\n' + LOCAL)
    assert at.config.starting_position == "at_timestamp"


def test_a_kafka_source_takes_trim_horizon_as_earliest(tmp_path: Path) -> None:
    loaded = load(tmp_path, BASE + KAFKA + 'starting_position = "TRIM_HORIZON"\n[checkpoints]\ntype = "kafka"\n')
    assert loaded.config.source.starting_position == "earliest"


@given(st.text(min_size=1, max_size=12).filter(lambda s: s not in ("native", "lambda") and "$" not in s))
def test_any_wrong_interface_is_refused_naming_both_choices(tmp_path_factory: pytest.TempPathFactory,
                                                           value: str) -> None:
    folder = tmp_path_factory.mktemp("enum")
    path = folder / "pipeline.json"
    path.write_bytes(orjson.dumps({"name": "p", "handler": "h:f", "interface": value,
                                   "source": {"type": "local", "stream": "s"}}))
    with pytest.raises(ConfigError) as raised:
        load_pipeline(path, env={})
    assert "'lambda', 'native'" in raised.value.message
