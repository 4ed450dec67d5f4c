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
    assert done.returncode == 2  # as run exits for the same error
    assert "no_such_handler_module" in done.stderr


def test_run_refuses_missing_handler_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(GOOD.replace("h:handle", "no_such_handler_module:handle"))
    done = subprocess.run([sys.executable, "-m", "streamfn", "run", str(path), "--until-caught-up"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "cannot import module 'no_such_handler_module'" in done.stderr
    assert not (tmp_path / "state").exists()  # nothing was opened, nothing read


LOCAL = "handler='h:handle'\n[source]\ntype='local'\nstream='s'\n"
KINESIS = "handler='h:handle'\n[source]\ntype='kinesis'\nstream='clicks'\n"
DDB = "handler='h:handle'\n[source]\ntype='dynamodb_streams'\ntable='orders'\n"
KAFKA = "handler='h:handle'\n[source]\ntype='kafka'\nbootstrap_servers='b:9092'\ntopic='t'\ngroup_id='g'\n"
TEMPLATE_SINK = "[[sinks]]\ntype='{kind}'\n{where}\nkey='{key}'\n"


def sink(key: str, kind: str = "local") -> str:
    return TEMPLATE_SINK.format(kind=kind, where="path='out'" if kind == "local" else "bucket='b'", key=key)


#: Configs that could write outside a sink's root, or cannot work: (text, field, words in the message).
REFUSED = {
    "pipeline named ..": ("name='..'\n" + LOCAL, "name", "not a valid name"),
    "pipeline name with a slash": ("name='../../tmp'\n" + LOCAL, "name", "not starting with '.'"),
    "hidden pipeline name": ("name='.p'\n" + LOCAL, "name", "not a valid name"),
    "local key climbing out": ("name='p'\n" + LOCAL + sink("../../{shard_id}/{first}-{last}"),
                               "sinks[0].key", "'..' segment"),
    "local key from the root": ("name='p'\n" + LOCAL + sink("/{shard_id}/{first}-{last}"),
                                "sinks[0].key", "starts with '/'"),
    "s3 key climbing out": ("name='p'\n" + LOCAL + sink("a/../../{shard_id}/{first}-{last}", "s3"),
                            "sinks[0].key", "'..' segment"),
    "s3 key from the root": ("name='p'\n" + LOCAL + sink("/{pipeline}/{shard_id}/{first}-{last}", "s3"),
                             "sinks[0].key", "starts with '/'"),
    "key naming a folder": ("name='p'\n" + LOCAL + sink("{shard_id}/{first}-{last}/"),
                            "sinks[0].key", "names a folder"),
    "stream name forming ..": ("name='p'\n" + KINESIS.replace("clicks", ".")
                               + sink("{stream}./{shard_id}/{first}-{last}"), "sinks[0].key", "'..' segment"),
    "at_timestamp on dynamodb streams": (
        "name='p'\nstarting_position='at_timestamp'\nstarting_timestamp=1.0\n" + DDB,
        "starting_position", "no AT_TIMESTAMP"),
    "timestamp without at_timestamp": ("name='p'\nstarting_timestamp=1.0\n" + LOCAL, "starting_timestamp",
                                       "only with starting_position"),
    "at_timestamp without timestamp": ("name='p'\nstarting_position='at_timestamp'\n" + LOCAL,
                                       "starting_timestamp", "needs starting_timestamp"),
    "kafka source timestamp without its position": ("name='p'\n" + KAFKA + "starting_timestamp=1.0\n",
                                                    "source.starting_timestamp", "only with"),
    "kinesis failures into their own stream": (
        "name='p'\n" + KINESIS + "[on_failure]\ntype='kinesis'\nstream='arn:aws:kinesis:us-east-1:1:stream/clicks'\n",
        "on_failure.stream", "own source"),
    "kafka failures into their own topic": (
        "name='p'\n" + KAFKA + "[on_failure]\ntype='kafka'\nbootstrap_servers='a:9092, b:9092'\ntopic='t'\n",
        "on_failure.topic", "own source"),
    "local failures into their own log stream": (
        "name='p'\n" + LOCAL + "[on_failure]\ntype='local_log'\nstream='s'\npath='state/log.sqlite3'\n",
        "on_failure.stream", "own source"),
    "kafka checkpoints without kafka": ("name='p'\n" + LOCAL + "[checkpoints]\ntype='kafka'\n",
                                        "checkpoints", "needs a source"),
    "windows with lanes": ("name='p'\ntumbling_window=10\nparallelization_factor=2\n" + LOCAL,
                           "tumbling_window", "per shard"),
    "limit without destination (field)": ("name='p'\n" + LOCAL + "[retry]\nmax_record_age=60\n", "on_failure",
                                          "would be dropped"),
    "s3 failure prefix climbing out": ("name='p'\n" + LOCAL + "[on_failure]\ntype='s3'\nbucket='b'\nprefix='../'\n",
                                       "on_failure.prefix", "'..' segment"),
    "no time to stop": ("name='p'\nshutdown_timeout=0\n" + LOCAL, "shutdown_timeout", "positive"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unsafe_or_unworkable_config_is_refused_with_its_field(tmp_path: Path, case: str) -> None:
    text, field, expected = REFUSED[case]
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    assert info.value.file == str(path)
    assert info.value.field == field
    assert expected in info.value.message
    assert f"`{field}`" in str(info.value)


ACCEPTED = {
    "ordinary names and keys": "name='clicks.v2_x-1'\n" + LOCAL + sink("{pipeline}/{stream}/{shard_id}/{first}-{last}"),
    "dots inside a key": "name='p'\n" + LOCAL + sink("a..b/.../{shard_id}/{first}..{last}.json"),
    "at_timestamp on kinesis": "name='p'\nstarting_position='at_timestamp'\nstarting_timestamp=1.0\n" + KINESIS,
    "latest on dynamodb streams": "name='p'\nstarting_position='latest'\n" + DDB,
    "kafka at_timestamp of its own": ("name='p'\n" + KAFKA
                                      + "starting_position='at_timestamp'\nstarting_timestamp=1.0\n"),
    "failures to another kinesis stream": "name='p'\n" + KINESIS + "[on_failure]\ntype='kinesis'\nstream='dlq'\n",
    "same stream name on another endpoint": ("name='p'\n" + KINESIS + "[on_failure]\ntype='kinesis'\nstream='clicks'\n"
                                             "endpoint_url='http://other:4567'\n"),
    "failures to another log stream": "name='p'\n" + LOCAL + "[on_failure]\ntype='local_log'\nstream='dlq'\n",
    "same log stream name in another log": ("name='p'\n" + LOCAL + "[on_failure]\ntype='local_log'\nstream='s'\n"
                                            "path='elsewhere.sqlite3'\n"),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_workable_configs_are_accepted(tmp_path: Path, case: str) -> None:
    path = tmp_path / "pipeline.toml"
    path.write_text(ACCEPTED[case])
    assert load_pipeline(path).config.name


def test_validate_refuses_a_pipeline_named_dot_dot(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(GOOD.replace('"p1"', '".."'))
    done = subprocess.run([sys.executable, "-m", "streamfn", "validate", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2  # as run exits for the same error
    assert f"{path}: field `name`: '..' is not a valid name" in done.stderr


@pytest.mark.parametrize(("section", "path", "field", "words"), [
    ("[[sinks]]\ntype='local'", "taken", "sinks[0].path", "taken is a file, not a folder"),
    ("[[sinks]]\ntype='local'", "taken/out", "sinks[0].path", "is under"),
    ("[on_failure]\ntype='local'", "taken", "on_failure.path", "taken is a file, not a folder"),
])
def test_an_output_folder_that_is_a_file_is_refused_with_its_field(tmp_path: Path, section: str, path: str,
                                                                    field: str, words: str) -> None:
    (tmp_path / "taken").write_text("a file where output would go\n")
    config = tmp_path / "pipeline.toml"
    config.write_text(f"name='p'\n{LOCAL}{section}\npath='{path}'\n")
    with pytest.raises(ConfigError) as info:
        load_pipeline(config)
    assert (info.value.file, info.value.field) == (str(config), field)
    assert words in info.value.message


@pytest.mark.parametrize("kind", ["sink", "destination"])
async def test_a_file_that_appears_after_loading_is_refused_at_open(tmp_path: Path, kind: str) -> None:
    from streamfn.connectors.local.destination import LocalDestination
    from streamfn.connectors.local.sink import LocalSink

    root = tmp_path / "out"
    part = LocalSink(root) if kind == "sink" else LocalDestination(root)
    root.write_text("appeared meanwhile\n")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        await part.open()
