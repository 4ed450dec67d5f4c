"""Pure parts of the CLI's polish: logfmt escaping, the extras a file needs, the blocked-shard verdict."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfn.config import load_pipeline
from streamfn.engine.stats import ShardStats
from streamfn.extras import extra_of_module, required_extras
from streamfn.logs import TextFormatter, logfmt_value
from streamfn.metrics import wants_openmetrics
from streamfn.ops.watchdog import blocked_too_long
from tests.logfmt import parse_logfmt


@given(st.text())
def test_any_value_survives_logfmt(value: str) -> None:
    assert parse_logfmt(f"k={logfmt_value(value)}") == {"k": value}


@given(st.dictionaries(st.text(min_size=1), st.one_of(st.text(), st.integers(), st.floats(), st.none(),
                                                      st.lists(st.text())), max_size=5), st.text())
def test_every_record_is_one_valid_logfmt_line(fields: dict[str, object], message: str) -> None:
    record = logging.LogRecord("streamfn.x", logging.WARNING, __file__, 1, "%s", (message,), None)
    for key, value in fields.items():
        record.__dict__[f"f_{key}"] = value
    line = TextFormatter().format(record)
    assert "\n" not in line
    pairs = parse_logfmt(line)
    assert pairs["msg"] == message and pairs["level"] == "warning" and pairs["logger"] == "streamfn.x"


def test_a_traceback_stays_on_its_line() -> None:
    try:
        raise ValueError('a "quoted" = value')
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), None)
        record.exc_info = sys.exc_info()
    pairs = parse_logfmt(TextFormatter().format(record))
    assert pairs["exception"].startswith("Traceback") and 'ValueError: a "quoted" = value' in pairs["exception"]


def _config(tmp_path: Path, body: str) -> Path:
    (tmp_path / "h.py").write_text("def handle(batch, context):\n    return []\n")
    path = tmp_path / "p.toml"
    path.write_text('name = "p"\nhandler = "h:handle"\n' + body)
    return path


def test_required_extras_name_the_first_field_needing_each(tmp_path: Path) -> None:
    config = _config(tmp_path, '[source]\ntype = "local"\nstream = "s"\n'
                               '[[sinks]]\ntype = "local"\npath = "out"\n'
                               '[[sinks]]\ntype = "dynamodb"\ntable = "t"\nregion = "us-east-1"\n'
                               '[on_failure]\ntype = "kafka"\ntopic = "dead"\nbootstrap_servers = "h:9092"\n'
                               '[metrics]\nenabled = true\n')
    loaded = load_pipeline(config)
    assert required_extras(loaded) == {"aws": "sinks[1].type", "kafka": "on_failure.type"}
    assert required_extras(loaded, metrics=True)["metrics"] == "metrics.enabled"
    assert [extra_of_module(m) for m in ("botocore.exceptions", "aiokafka.errors", "yaml", None)] == [
        "aws", "kafka", None, None]


class _Runner:
    def __init__(self, stats: ShardStats) -> None:
        self.stats = stats


class _Pipeline:
    def __init__(self, name: str, runners: dict[str, _Runner]) -> None:
        self.name, self.runners = name, runners


def test_the_verdict_names_the_shard_blocked_long_enough() -> None:
    moving, stuck = ShardStats("shard-1"), ShardStats("shard-2")
    stuck.mark_blocked("handler", "RuntimeError: database down")
    pipelines = [_Pipeline("p", {"shard-1": _Runner(moving), "shard-2": _Runner(stuck)})]
    assert blocked_too_long(pipelines, 60) is None
    verdict = blocked_too_long(pipelines, 0.0)
    assert verdict is not None and "shard-2" in verdict and "database down" in verdict and "'p'" in verdict


@pytest.mark.parametrize(("accept", "expected"), [
    ("application/openmetrics-text;version=1.0.0,text/plain;q=0.5", True),
    ("text/plain, Application/OpenMetrics-Text ; version=0.0.1", True),
    ("text/plain;version=0.0.4", False), ("", False), ("*/*", False)])
def test_openmetrics_only_when_asked(accept: str, expected: bool) -> None:
    assert wants_openmetrics(accept) is expected
