"""A daemon killed with SIGKILL at random moments and restarted loses nothing and duplicates nothing.

The union of all output objects must equal the input exactly, with no record in two objects:
checkpoints move only after output is durable, and a replay re-forms the batches whose output
may already exist, so their objects are overwritten rather than doubled.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from streamfn.connectors.local.store import decode_checkpoint
from tests.pipelines import append, daemon, kill, output_objects, write_pipeline

SLOWISH = """
import time

def handle(batch, context):
    time.sleep(0.004 * len(batch) ** 0.5)
    return [{"seq": r.sequence, "shard": r.shard_id, "v": r.json()["v"]} for r in batch]
"""


SLOW = """
import os
import time

def handle(batch, context):
    time.sleep(0.08 * int(os.environ.get("LANES", "1")))
    return [{"seq": r.sequence, "shard": r.shard_id, "v": r.json()["v"]} for r in batch]
"""


def assert_exact_output(out: Path, n: int) -> None:
    objects = output_objects(out)
    values = Counter(item["v"] for items in objects.values() for item in items)
    duplicated = {v: c for v, c in values.items() if c > 1}
    assert not duplicated, f"records in more than one object: {list(duplicated)[:10]}"
    assert sorted(values) == list(range(n)), f"missing: {sorted(set(range(n)) - set(values))[:10]}"


def wait_for_output_past(out: Path, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(len(items) for items in output_objects(out).values()) > count:
            return
        time.sleep(0.02)


@pytest.mark.parametrize(("lanes", "window", "seed"), [(1, 0.0, 1), (1, 0.02, 2), (3, 0.0, 3)])
def test_sigkill_and_restart_is_exact(tmp_path: Path, lanes: int, window: float, seed: int) -> None:
    rng = random.Random(seed)
    n = 12000
    config = write_pipeline(
        tmp_path, SLOW, shards=3, extra=f"parallelization_factor = {lanes}",
        batching=f"max_records = 50\nwindow = {window}",
        sinks='[[sinks]]\ntype = "local"\npath = "out"\n',
    )
    append(config, [(f"k{i % 17}", orjson.dumps({"v": i})) for i in range(n)])
    handled_after_kill = []
    for _ in range(7):
        before = sum(len(items) for items in output_objects(tmp_path / "out").values())
        proc = daemon(config, env={"LANES": str(lanes)})
        wait_for_output_past(tmp_path / "out", before, timeout=30)  # start-up time varies with the machine's load
        time.sleep(rng.uniform(0.0, 0.8))  # then kill at a random moment while batches are in flight
        kill(proc, signal.SIGKILL)
        proc.wait(timeout=10)
        handled_after_kill.append(sum(len(items) for items in output_objects(tmp_path / "out").values()))
    assert 0 < handled_after_kill[0] < n, "the first kill landed while records were being handled"
    assert sum(count < n for count in handled_after_kill) >= 5, f"kills mostly after the work: {handled_after_kill}"
    final = daemon(config, "--until-caught-up")
    _, err = final.communicate(timeout=120)
    assert final.returncode == 0, err.decode()[-2000:]
    assert_exact_output(tmp_path / "out", n)


def test_sigterm_stops_gracefully_with_checkpoint_at_last_output(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, SLOWISH, shards=2, batching="max_records = 20",
                            sinks='[[sinks]]\ntype = "local"\npath = "out"\n')
    append(config, [(f"k{i % 5}", orjson.dumps({"v": i})) for i in range(20000)])
    proc = daemon(config)
    time.sleep(1.5)
    started = time.monotonic()
    kill(proc, signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert time.monotonic() - started < 30
    db = sqlite3.connect(tmp_path / "state" / "checkpoints.sqlite3")
    checkpoints = {
        shard: decode_checkpoint(state)
        for shard, state in db.execute("SELECT shard_id, state FROM checkpoints")
    }
    last_written: dict[str, int] = {}
    for items in output_objects(tmp_path / "out").values():
        for item in items:
            last_written[item["shard"]] = max(last_written.get(item["shard"], 0), item["seq"])
    assert last_written, "the daemon handled something before SIGTERM"
    for shard, seq in last_written.items():
        checkpoint = checkpoints[shard]
        assert checkpoint.position is not None
        assert checkpoint.position.sequence == seq, f"{shard}: checkpoint {checkpoint.position} != output {seq}"
        assert checkpoint.pending == ()


STUCK = """
import time

def handle(batch, context):
    time.sleep(3600)  # a plain function that never returns: its thread cannot be interrupted
"""


def test_sigterm_exits_in_bounded_time_with_a_stuck_sync_handler(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, STUCK, shards=1, sinks="", extra="shutdown_timeout = 1.0\ntimeout = 3600")
    append(config, [("k", orjson.dumps({"v": 1}))])
    proc = daemon(config)
    time.sleep(1.5)
    started = time.monotonic()
    kill(proc, signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert time.monotonic() - started < 15
    assert b"abandoned" in err
