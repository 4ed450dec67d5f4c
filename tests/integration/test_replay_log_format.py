"""``streamfn replay`` on stderr: JSON lines only with ``--log-format json``, and its progress bar drawn
only on a terminal (a real pseudo-terminal here), as ``produce`` does."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.integration.test_ops_cli import ok, streamfn
from tests.pipelines import append, stderr_on_a_terminal, write_pipeline

ECHO = "def handle(batch, context):\n    print('handled', len(batch))\n    return [r.json() for r in batch]\n"


def live_run(tmp_path: Path) -> Path:
    config = write_pipeline(tmp_path, ECHO, shards=2, batching="max_records = 50")
    append(config, [(f"k{i}", orjson.dumps({"v": i})) for i in range(400)])
    ok(streamfn("run", str(config), "--until-caught-up", cwd=tmp_path))
    return config


def replay_on_a_terminal(config: Path, *flags: str) -> str:
    return stderr_on_a_terminal(config.parent, *flags, "replay", str(config), "--from", "trim_horizon")


def test_replay_in_json_mode_writes_json_lines_only(tmp_path: Path) -> None:
    config = live_run(tmp_path)
    result = streamfn("--log-format", "json", "replay", str(config), "--from", "trim_horizon", cwd=tmp_path)
    ok(result)
    lines = [orjson.loads(line) for line in result.stderr.splitlines()]  # raises on any non-JSON line
    assert "\r" not in result.stderr
    done = [line for line in lines if line["message"] == "replayed records"]
    assert [line["records"] for line in done] == [400]
    assert any(line["message"] == "handled 50" and line["request_id"] for line in lines), "handler output as JSON"


def test_replay_draws_its_bar_on_a_terminal_in_text_mode_only(tmp_path: Path) -> None:
    config = live_run(tmp_path)
    text = streamfn("replay", str(config), "--from", "trim_horizon", cwd=tmp_path)
    assert "\r" not in ok(text) + text.stderr, "not a terminal: no bar"
    assert "replayed 400 records of pipeline 'p'" in text.stderr
    shown = replay_on_a_terminal(config)
    assert "\r[" in shown and "400/400 records" in shown
    shown = replay_on_a_terminal(config, "--log-format", "json")
    assert "\r" not in shown.replace("\r\n", "\n")
    assert all(orjson.loads(line) for line in shown.replace("\r\n", "\n").splitlines())
