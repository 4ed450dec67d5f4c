"""``streamfn checkpoints show|reset|set`` on local checkpoints, with a real daemon holding the pipeline."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson

from tests.pipelines import append, daemon, kill, run_until_caught_up, write_pipeline

ECHO = """
from pathlib import Path

def handle(batch, context):
    with Path(__file__).with_name("handled.txt").open("a") as out:
        out.writelines(f"{r.json()['v']}\\n" for r in batch)
"""


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamfn", "checkpoints", args[0], str(config), *args[1:]],
                          capture_output=True, text=True, timeout=60, cwd=config.parent)


def handled(folder: Path) -> list[int]:
    path = folder / "handled.txt"
    return sorted(int(line) for line in path.read_text().split()) if path.exists() else []


def checkpoints(config: Path) -> dict[str, str]:
    shown = cli(config, "show")
    assert shown.returncode == 0, shown.stderr
    return {line.split()[0]: line.split()[1] for line in shown.stdout.splitlines()[1:]}


def test_show_reset_and_set_move_what_the_next_run_handles(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, ECHO, shards=1, sinks="")
    now = time.time()
    append(config, [(f"k{i}", orjson.dumps({"v": i})) for i in range(20)], arrival_time=now - 600)
    append(config, [(f"k{i}", orjson.dumps({"v": i})) for i in range(20, 30)], arrival_time=now - 300)
    assert checkpoints(config) == {"shard-0000": "none"}
    run_until_caught_up(config)
    assert checkpoints(config) == {"shard-0000": "30"}

    dry = cli(config, "reset", "--to", "trim_horizon", "--dry-run")
    assert dry.returncode == 0 and "shard-0000: 30 -> 0" in dry.stdout and "nothing written" in dry.stdout
    assert checkpoints(config) == {"shard-0000": "30"}

    assert cli(config, "reset", "--to", repr(now - 450)).returncode == 0  # epoch seconds: the later records
    assert checkpoints(config) == {"shard-0000": "20"}
    (tmp_path / "handled.txt").unlink()
    run_until_caught_up(config)
    assert handled(tmp_path) == list(range(20, 30))

    assert cli(config, "set", "--shard", "shard-0000", "--sequence", "25").returncode == 0
    (tmp_path / "handled.txt").unlink()
    run_until_caught_up(config)
    assert handled(tmp_path) == list(range(25, 30)), "resumed strictly after sequence 25 (value 24)"

    for refused, why in ((["--sequence", "31"], "the log ends at 30"), (["--sequence", "-2"], "negative")):
        done = cli(config, "set", "--shard", "shard-0000", *refused)
        assert done.returncode != 0 and why in done.stderr, done.stderr
    unknown = cli(config, "set", "--shard", "shard-0009", "--sequence", "1")
    assert unknown.returncode != 0 and "no shard 'shard-0009'" in unknown.stderr
    assert checkpoints(config) == {"shard-0000": "30"}, "nothing refused was written"

    assert cli(config, "reset", "--to", "latest").returncode == 0
    append(config, [(f"k{i}", orjson.dumps({"v": i})) for i in range(30, 33)])
    (tmp_path / "handled.txt").unlink()
    run_until_caught_up(config)
    assert handled(tmp_path) == [30, 31, 32]


def test_edits_are_refused_while_a_daemon_runs_the_pipeline_unless_forced(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, ECHO, shards=2, sinks="")
    append(config, [(f"k{i}", orjson.dumps({"v": i})) for i in range(10)])
    process = daemon(config)
    try:
        deadline = time.monotonic() + 30
        while "a running daemon" not in cli(config, "show").stdout:
            assert time.monotonic() < deadline and process.poll() is None, "the daemon never took its run lock"
            time.sleep(0.1)
        refused = cli(config, "reset")
        assert refused.returncode == 1
        assert "running daemon" in refused.stderr and "--force" in refused.stderr
        assert cli(config, "reset", "--dry-run").returncode == 0, "a dry run only reads"
        forced = cli(config, "set", "--shard", "shard-0000", "--sequence", "0", "--force")
        assert forced.returncode == 0, forced.stderr
    finally:
        kill(process)
        process.wait(timeout=10)
    assert cli(config, "reset").returncode == 0, "the lock died with the daemon: no stale mark"
