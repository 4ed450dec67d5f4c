"""The operator verbs end to end on the local log, each run as ``python -m streamfn ...``."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson

from tests.pipelines import REPO, append, daemon, kill, output_objects, write_pipeline

CALLS_LOG = """
import os
from pathlib import Path

def handle(batch, context):
    with open(Path(__file__).parent / "calls.log", "a") as log:
        log.write("".join(f"{r.shard_id} {r.sequence} {r.json()['v']}\\n" for r in batch))
    return [{"shard": r.shard_id, "seq": r.sequence, "v": r.json()["v"]} for r in batch]
"""


def streamfn(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "streamfn", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def table_rows(text: str) -> dict[str, list[str]]:
    """Status table rows by shard id (header and footnote dropped)."""
    rows = {}
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells and cells[0] != "PIPELINE" and len(cells) >= 7:
            rows[cells[1]] = cells
    return rows


def events(start: int, n: int) -> list[tuple[str, bytes]]:
    return [(f"key-{i % 5}", orjson.dumps({"v": i})) for i in range(start, start + n)]


def test_init_writes_a_pipeline_that_runs(tmp_path: Path) -> None:
    out = ok(streamfn("init", "starter", "--name", "orders", cwd=tmp_path))
    config = tmp_path / "starter" / "pipeline.toml"
    assert str(config.relative_to(tmp_path)) in out and (tmp_path / "starter" / "orders_handler.py").exists()
    assert config.read_text().count("#") > 10, "the starter config explains itself"
    ok(streamfn("validate", str(config), cwd=tmp_path))
    ok(streamfn("produce", str(config), "--count", "500", "--quiet", cwd=tmp_path))
    ok(streamfn("run", str(config), "--until-caught-up", cwd=tmp_path))
    written = output_objects(tmp_path / "starter" / "out")
    assert sum(len(items) for items in written.values()) == 500
    again = streamfn("init", "starter", cwd=tmp_path)
    assert again.returncode == 2 and "--force" in again.stderr, "init never overwrites silently"


def test_status_shows_checkpoint_and_lag_without_a_daemon(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, CALLS_LOG, shards=3)
    append(config, events(0, 90))
    before = table_rows(ok(streamfn("status", str(config), cwd=tmp_path)))
    assert sorted(before) == ["shard-0000", "shard-0001", "shard-0002"]
    tips = {shard: int(cells[3]) for shard, cells in before.items()}
    assert sum(tips.values()) == 90
    for shard, cells in before.items():
        assert cells[2] == "-" and int(cells[4]) == tips[shard], "no checkpoint yet: lag is the whole shard"
        assert cells[6] == "?", "blocked is unknown without a daemon"
    ok(streamfn("run", str(config), "--until-caught-up", cwd=tmp_path))
    append(config, events(90, 10))
    after = table_rows(ok(streamfn("status", str(config), cwd=tmp_path)))
    assert sum(int(cells[4]) for cells in after.values()) == 10
    for shard, cells in after.items():
        assert int(cells[2]) == tips[shard], "checkpoint at the old tip"
    as_json = orjson.loads(ok(streamfn("status", str(config), "--json", cwd=tmp_path)))
    assert {row["shard_id"]: row["lag"] for row in as_json} == {s: int(c[4]) for s, c in after.items()}


def test_tail_prints_records_in_shard_order(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, CALLS_LOG, shards=2)
    append(config, events(0, 40))
    lines = ok(streamfn("tail", str(config), "--from", "trim_horizon", "--count", "40", "--json", cwd=tmp_path))
    printed = [orjson.loads(line) for line in lines.splitlines()]
    assert sorted(p["data"]["v"] for p in printed) == list(range(40))
    for shard in {p["shard"] for p in printed}:
        sequences = [int(p["sequence"]) for p in printed if p["shard"] == shard]
        assert sequences == list(range(1, len(sequences) + 1))
    limited = ok(streamfn("tail", str(config), "--from", "trim_horizon", "--count", "5", cwd=tmp_path))
    assert len(limited.splitlines()) == 5
    assert not (tmp_path / "state" / "checkpoints.sqlite3").exists(), "tail never checkpoints"


def test_tail_follows_new_records(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, CALLS_LOG, shards=2)
    append(config, events(0, 10))  # before the tail starts: not shown from "latest"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    tail = subprocess.Popen([sys.executable, "-m", "streamfn", "tail", str(config), "--count", "3", "--json"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while tail.poll() is None and time.monotonic() < deadline:
            append(config, events(100, 1))  # keep appending until the tail has seen three
            time.sleep(0.2)
        stdout, stderr = tail.communicate(timeout=10)
    finally:
        tail.kill()
    assert tail.returncode == 0, stderr
    assert [orjson.loads(line)["data"]["v"] for line in stdout.splitlines()] == [100, 100, 100]


def test_replay_reprocesses_a_time_range_into_the_same_objects(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, CALLS_LOG, shards=2, batching="max_records = 1000")
    append(config, events(0, 30))
    time.sleep(0.05)
    start = time.time()
    time.sleep(0.05)
    append(config, events(30, 20))
    time.sleep(0.05)
    until = time.time()
    time.sleep(0.05)
    append(config, events(50, 10))
    ok(streamfn("run", str(config), "--until-caught-up", cwd=tmp_path))
    calls = tmp_path / "calls.log"
    assert len(calls.read_text().splitlines()) == 60
    status_before = ok(streamfn("status", str(config), cwd=tmp_path))
    objects_before = output_objects(tmp_path / "out")

    calls.unlink()
    result = streamfn("replay", str(config), "--from", str(start), "--to", str(until), cwd=tmp_path)
    ok(result)
    assert "replayed 60 records" in result.stderr  # no bar: stderr is not a terminal here
    replayed = sorted(int(line.split()[2]) for line in calls.read_text().splitlines())
    # each shard's one live batch (max_records = 1000) holds records from before, in and after the
    # range: it is formed again whole, so that it overwrites its object (test_replay_exact.py)
    assert replayed == list(range(60)), "every record in the range, in whole live batches"
    assert output_objects(tmp_path / "out") == objects_before
    assert ok(streamfn("status", str(config), cwd=tmp_path)) == status_before, "live checkpoints untouched"

    calls.unlink()
    ok(streamfn("replay", str(config), "--from", "trim_horizon", "--quiet", cwd=tmp_path))
    assert sorted(int(line.split()[2]) for line in calls.read_text().splitlines()) == list(range(60))
    objects_after = output_objects(tmp_path / "out")
    assert set(objects_after) >= set(objects_before)
    for key, items in objects_before.items():
        assert objects_after[key] == items
    assert not list((tmp_path / "state" / "replay").iterdir()), "a finished replay leaves no private state"


def test_replay_rejects_a_backwards_range(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, CALLS_LOG, shards=1)
    result = streamfn("replay", str(config), "--from", "2026-01-02T00:00:00Z", "--to", "2026-01-01", cwd=tmp_path)
    assert result.returncode == 2 and "--to is before --from" in result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


POISON = """
def handle(batch, context):
    if any(r.json()["v"] == 13 for r in batch):
        raise RuntimeError("poison record 13")
    return []
"""


def test_status_reads_blocked_shards_from_a_running_daemon(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, POISON, shards=2, sinks="")
    append(config, events(0, 40))
    port = free_port()
    process = daemon(config, "--metrics-port", str(port), env={"PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 30
        blocked: list[str] = []
        while time.monotonic() < deadline and not blocked:
            time.sleep(0.3)
            text = ok(streamfn("status", str(config), "--metrics-url", f"http://127.0.0.1:{port}", cwd=tmp_path))
            rows = table_rows(text)
            blocked = [shard for shard, cells in rows.items() if cells[6].startswith("YES")]
        assert len(blocked) == 1, text
        others = [cells[6] for shard, cells in rows.items() if shard not in blocked]
        assert others == ["no"], text
    finally:
        kill(process)
        process.wait(timeout=10)
