"""``streamfn produce``: synthetic events and NDJSON files into the local log, through the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from streamfn.connectors.local.log import LocalLog
from tests.pipelines import write_pipeline

ECHO = "def handle(batch, context):\n    return [r.json() for r in batch]\n"


def produce(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamfn", "produce", str(config), *args],
                          capture_output=True, text=True, timeout=60)


def stored(folder: Path) -> list[tuple[str, bytes]]:
    log = LocalLog(folder / "state" / "log.sqlite3")
    try:
        return [(r.partition_key, r.data) for shard in log.shard_ids("s") for r in log.read("s", shard, 0, 10_000)]
    finally:
        log.close()


def test_synthetic_count(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, ECHO, shards=3)
    done = produce(config, "--count", "1234")
    assert done.returncode == 0, done.stderr
    records = stored(tmp_path)
    assert len(records) == 1234
    assert all("page" in orjson.loads(data) for _, data in records)


def test_ndjson_with_key_field_and_a_bad_line(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, ECHO, shards=2)
    good = tmp_path / "good.ndjson"
    good.write_bytes(b'{"user": "a", "n": 1}\n\n{"user": "b", "n": 2}\n')
    assert produce(config, "--input", str(good), "--key-field", "user").returncode == 0
    assert sorted(stored(tmp_path)) == [("a", b'{"user": "a", "n": 1}'), ("b", b'{"user": "b", "n": 2}')]
    bad = tmp_path / "bad.ndjson"
    bad.write_bytes(b'{"user": "c", "n": 3}\n{"user": oops}\n{"user": "d", "n": 4}\n')
    done = produce(config, "--input", str(bad), "--key-field", "user")
    assert done.returncode == 1
    assert "line 2" in done.stderr and "Traceback" not in done.stderr
    assert len(stored(tmp_path)) == 2, "a bad line appends nothing from its chunk"
