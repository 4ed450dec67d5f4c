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
         "--shards", "1,4", "--live-seconds", "0.3", "--no-connectors", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    report = orjson.loads((tmp_path / "latest.json").read_bytes())
    rows = report["local_log"]
    assert [(r["handler"], r["shards"]) for r in rows] == [("noop", 1), ("noop", 4), ("json", 1), ("json", 4)]
    for row in rows:
        assert row["records"] == 20000 and row["batches"] >= 200 and row["records_per_s"] > 0
        assert row["latency_samples"] > 0 and row["latency_p99_ms"] >= row["latency_p50_ms"]
    assert "noop batch=100 shards=4" in done.stdout
    if (tmp_path / "local_log.png").exists():
        assert (tmp_path / "local_log.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
