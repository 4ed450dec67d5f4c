"""Pipeline files: every error names the file and the field; good files fill defaults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streamfn.config import json_schema, load_pipeline
from streamfn.errors import ConfigError

GOOD = """
name = "p1"
handler = "h:handle"
[source]
type = "local"
stream = "s"
"""

BROKEN = {
    "wrong type": ("name='p'\nhandler='h:handle'\n[source]\ntype='local'\nstream='s'\n[batching]\nmax_records='many'\n",
                   "batching.max_records", "int"),
    "unknown field": ("name='p'\nhandler='h:handle'\nretries=3\n[source]\ntype='local'\nstream='s'\n",
                      "retries", "unknown field"),
    "missing field": ("name='p'\n[source]\ntype='local'\nstream='s'\n", "handler", "missing required field"),
    "unknown source type": ("name='p'\nhandler='h:handle'\n[source]\ntype='kinesiss'\nstream='s'\n",
                            "source.type", "kinesiss"),
    "out of range": ("name='p'\nhandler='h:handle'\n[source]\ntype='local'\nstream='s'\n[batching]\nwindow=900\n",
                     "batching", "window"),
    "limit without destination": (
        "name='p'\nhandler='h:handle'\n[source]\ntype='local'\nstream='s'\n[retry]\nmax_attempts=2\n",
        None, "on_failure destination"),
    "bad key template": (
        "name='p'\nhandler='h:handle'\n[source]\ntype='local'\nstream='s'\n[[sinks]]\ntype='local'\npath='o'\n"
        "key='{shard_id}/{nope}'\n", "sinks[0].key", "nope"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_config_names_file_and_field(tmp_path: Path, case: str) -> None:
    text, field, expected = BROKEN[case]
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    message = str(info.value)
    assert str(path) in message
    assert expected in message
    if field is not None:
        assert info.value.field == field
        assert f"`{field}`" in message


def test_syntax_error_names_file(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("name = \n")
    with pytest.raises(ConfigError, match=r"p\.toml: not valid TOML"):
        load_pipeline(path)


def test_missing_env_variable_names_field(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(GOOD.replace('stream = "s"', 'stream = "${STREAM_NAME_FOR_TEST}"'))
    with pytest.raises(ConfigError) as info:
        load_pipeline(path, env={})
    assert info.value.field == "source.stream"
    assert "STREAM_NAME_FOR_TEST" in str(info.value)


def test_env_strings_convert_to_numbers(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(GOOD + '[batching]\nmax_records = "${BATCH:-250}"\n')
    assert load_pipeline(path, env={}).config.batching.max_records == 250


def test_yaml_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: p2\nhandler: h:handle\nsource: {type: local, stream: s, shards: 2}\n")
    loaded = load_pipeline(path)
    assert loaded.config.batching.max_records == 100
    assert loaded.config.retry.max_attempts == -1
    assert loaded.context.state_dir == tmp_path.resolve() / "state"


def test_json_schema_describes_fields() -> None:
    schema = json_schema()
    assert "PipelineConfig" in str(schema)
    assert "max_records" in str(schema)


def test_validate_reports_missing_handler_module(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(GOOD.replace("h:handle", "no_such_handler_module:handle"))
    done = subprocess.run([sys.executable, "-m", "streamfn", "validate", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "no_such_handler_module" in done.stderr


def test_run_refuses_missing_handler_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(GOOD.replace("h:handle", "no_such_handler_module:handle"))
    done = subprocess.run([sys.executable, "-m", "streamfn", "run", str(path), "--until-caught-up"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "cannot import module 'no_such_handler_module'" in done.stderr
    assert not (tmp_path / "state").exists()  # nothing was opened, nothing read
