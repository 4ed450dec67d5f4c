"""The Kafka benchmark's contenders run against a real broker, so the harness cannot silently break:
a tiny preloaded topic drained by the pipeline (columnar batches, coalesced commits) and by the raw
aiokafka loop, each in its own process as ``benchmarks.kafka_vs_raw`` runs them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson

from benchmarks.kafka_vs_raw import preload

ROOT = Path(__file__).resolve().parents[2]


def test_the_pipeline_and_the_raw_loop_each_drain_the_topic_in_a_fresh_process(kafka_bootstrap: str) -> None:
    records = 2_000
    topic = asyncio.run(preload(kafka_bootstrap, records, 2))
    for contender in ("streamfn", "raw-aiokafka"):
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.kafka_vs_raw", "--run", contender, "--bootstrap", kafka_bootstrap,
             "--topic", topic, "--records", str(records), "--batch", "100"],
            capture_output=True, check=False, timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        result = orjson.loads(done.stdout.splitlines()[-1])
        assert result["seconds"] > 0 and result["cpu"] > 0 and result["peak_rss_mib"] > 0
        assert result["commits"] >= 1  # every record handled, then committed (the last flush at least)
