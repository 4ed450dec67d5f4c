"""``streamfn tail --output``: what the handler returned, as the local sink wrote it (real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson

from tests.pipelines import append, daemon, kill, run_until_caught_up, write_pipeline

DOUBLE = """
def handle(batch, context):
    return [{"doubled": r.json()["v"] * 2, "shard": context.shard_id} for r in batch]
"""


def tail(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamfn", "tail", str(config), "--output", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=config.parent)


def test_from_trim_horizon_prints_every_item_the_sink_wrote(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, DOUBLE, shards=2)
    append(config, [(f"k{i}", orjson.dumps({"v": i})) for i in range(30)])
    run_until_caught_up(config)

    done = tail(config, "--from", "trim_horizon", "--count", "30", "--json")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(line["item"]["doubled"] for line in lines) == [2 * i for i in range(30)], "the output, not the input"
    assert all(line["object"].endswith(".ndjson") for line in lines)

    text = tail(config, "--from", "trim_horizon", "--count", "1")
    assert text.returncode == 0 and '"doubled"' in text.stdout and ".ndjson  {" in text.stdout


def test_follows_objects_written_since_a_time(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, DOUBLE, shards=1)
    append(config, [(f"k{i}", orjson.dumps({"v": i})) for i in range(10)])
    run_until_caught_up(config)  # objects written before --from are not shown
    since = time.time()
    follower = subprocess.Popen([sys.executable, "-m", "streamfn", "tail", str(config), "--output", "--json",
                                 "--count", "5", "--from", repr(since)], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    running = daemon(config)
    try:
        append(config, [(f"k{i}", orjson.dumps({"v": i})) for i in range(100, 105)])
        out, err = follower.communicate(timeout=60)
        assert follower.returncode == 0, err
        assert sorted(json.loads(line)["item"]["doubled"] for line in out.splitlines()) == [200, 202, 204, 206, 208]
    finally:
        kill(running)
        running.communicate(timeout=10)
        if follower.poll() is None:
            follower.kill()
            follower.communicate(timeout=10)


def test_reads_an_s3_sinks_objects(tmp_path: Path, moto_endpoint: str, aws_env: dict[str, str]) -> None:
    bucket = f"tail-{uuid.uuid4().hex[:8]}"
    config = write_pipeline(tmp_path, DOUBLE, shards=2, sinks=f'[[sinks]]\ntype = "s3"\nbucket = "{bucket}"\n'
                                                              f'endpoint_url = "{moto_endpoint}"\n'
                                                              "create_bucket = true\ngzip = true\n")
    append(config, [(f"k{i}", orjson.dumps({"v": i})) for i in range(20)])
    run_until_caught_up(config)  # aws_env has set fake credentials in os.environ
    done = subprocess.run([sys.executable, "-m", "streamfn", "tail", str(config), "--output", "--json", "--from",
                           "trim_horizon", "--count", "20"], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env={**os.environ, **aws_env})
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(line["item"]["doubled"] for line in lines) == [2 * i for i in range(20)]
    assert all(line["object"].endswith(".gz") for line in lines), "gzip objects are shown decompressed"


def test_a_pipeline_without_a_local_sink_is_refused(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, DOUBLE, shards=1, sinks="")
    done = tail(config, "--count", "1")
    assert done.returncode == 2 and "local and S3 sinks" in done.stderr and "Traceback" not in done.stderr
