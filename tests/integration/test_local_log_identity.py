"""A recreated ``log.sqlite3`` under existing checkpoints: refused with the fix named, never skipped silently.

Measured before: every new record was skipped (100 of 100) and ``streamfn status`` showed lag 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.pipelines import append, output_objects, run_until_caught_up, write_pipeline

HANDLER = """
def handle(batch, context):
    return [{"data": r.data.decode()} for r in batch]
"""


def streamfn(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamfn", *args], cwd=config.parent, capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_a_recreated_log_is_refused_until_the_checkpoints_are_reset(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path / "pipe", HANDLER, shards=2)
    append(config, [(f"k{i}", f"old-{i}".encode()) for i in range(300)])
    run_until_caught_up(config)
    state = config.parent / "state"
    for name in ("log.sqlite3", "log.sqlite3-wal", "log.sqlite3-shm"):
        (state / name).unlink(missing_ok=True)
    append(config, [(f"k{i}", f"new-{i}".encode()) for i in range(100)])

    status = streamfn(config, "status", str(config))
    assert status.returncode == 1, status.stdout
    assert "recreated or replaced" in status.stderr and "streamfn checkpoints reset CONFIG" in status.stderr

    run = streamfn(config, "run", str(config), "--until-caught-up", timeout=30)
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    assert "recreated or replaced" in run.stderr and "streamfn checkpoints reset CONFIG" in run.stderr

    reset = streamfn(config, "checkpoints", "reset", str(config))
    assert reset.returncode == 0, reset.stderr
    assert "reset 2 shard(s)" in reset.stdout and "trim_horizon" in reset.stdout
    dry = streamfn(config, "checkpoints", "reset", str(config), "--to", "latest", "--dry-run")
    assert dry.returncode == 0 and "nothing written" in dry.stdout

    run_until_caught_up(config)
    handled = {item["data"] for items in output_objects(config.parent / "out").values() for item in items}
    assert {f"new-{i}" for i in range(100)} <= handled
    status = streamfn(config, "status", str(config), "--json")
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)
    assert [row["lag"] for row in rows] == [0, 0]
    assert sum(row["tip"] for row in rows) == 100
