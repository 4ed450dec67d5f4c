"""A smoke run of ``python -m benchmarks`` on a tiny grid (opt-in: a benchmark, not a test of speed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.pipelines import REPO


@pytest.mark.benchmark
def test_harness_writes_results_and_chart(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--records", "20000", "--handlers", "noop,json", "--batches", "100",
         "--shards", "1,4", "--reps", "2", "--live-seconds", "0.3", "--no-connectors", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr
    report = orjson.loads((tmp_path / "latest.json").read_bytes())
    assert len(report["commit"]) >= 40 and report["versions"]["orjson"] and report["versions"]["python"]
    rows = report["local_log"]
    ours = [r for r in rows if r["contender"] == "streamfn"]
    assert sorted((r["handler"], r["shards"]) for r in ours) == [("json", 1), ("json", 4), ("noop", 1), ("noop", 4)]
    for row in ours:
        assert row["reps"] == 2 and len(report["runs"][f"streamfn {row['scenario']}"]) == 2
        assert row["records"] == 20000 and row["batches"] >= 200 and row["records_per_s"] > 0
        assert row["cpu_us_per_record"] > 0 and row["peak_rss_mib"] > 0 and row["faults_per_m_records"] >= 0
        assert row["latency_samples"] > 0 and row["latency_p99_ms"] >= row["latency_p50_ms"]
        # A ratio to the JSON floor only where the handler does the floor's work.
        assert ("x_floor" in row) == (row["handler"] == "json")
    floors = [r for r in rows if r["contender"] == "floor"]
    assert sorted(r["shards"] for r in floors) == [1, 4] and all(r["records"] == 20000 for r in floors)
    assert "no-op handler" in done.stdout and "x floor" in done.stdout
    if (tmp_path / "local_log.png").exists():
        assert (tmp_path / "local_log.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_local_log_scenario_runs_against_this_code(tmp_path: Path) -> None:
    """Always on, and seconds long: the benchmark builds its pipeline through the same code as
    ``streamfn run``, so a change there that breaks it is caught here, not at the next benchmark."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.local_log", "--handler", "noop", "--batch", "100", "--records", "2000",
         "--live-seconds", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = orjson.loads(done.stdout)
    assert (result["records"], result["batches"], result["mean_batch"]) == (2000, 20, 100.0)
