"""Acceptance: two published versions, the alias moved (and moved back) while records flow through
``streamfn run``; every batch is handled wholly by one version, the daemon never restarts, and no
record is lost or handled twice."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from tests.pipelines import append, daemon, kill, output_objects, write_pipeline

HANDLER = """
import time

MARK = {mark}

def handle(batch, context):
    time.sleep(0.002)
    return [{{"v": record.json()["v"], "mark": MARK, "version": context.function_version,
              "arn": context.invoked_function_arn}} for record in batch]
"""


def cli(*words: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "streamfn", *words], cwd=cwd, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def batches(folder: Path) -> list[list[dict[str, Any]]]:
    return list(output_objects(folder / "out").values())


def by_shard(folder: Path) -> dict[str, list[int]]:
    """Per shard, the version of each batch in sequence order."""
    found: dict[str, list[int]] = defaultdict(list)
    for key, batch in output_objects(folder / "out").items():
        found[Path(key).parent.name].append(batch[0]["mark"])
    return found


def _runs(history: list[int]) -> list[int]:
    """``[1, 1, 2, 2, 1]`` -> ``[1, 2, 1]``."""
    return [mark for i, mark in enumerate(history) if i == 0 or history[i - 1] != mark]


def wait_for(condition: Any, feed: Any, timeout: float = 60.0) -> None:
    """Feed records until ``condition`` holds (so nothing depends on how fast the daemon is)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        feed()
        time.sleep(0.05)


def test_alias_switch_and_rollback_under_load(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, HANDLER.format(mark=1), shards=2, handler_module="app",
                            extra='handler_version = "live"', batching="max_records = 5")
    cli("publish", str(config), cwd=tmp_path)
    (tmp_path / "app.py").write_text(HANDLER.format(mark=2))
    assert "published version 2" in cli("publish", str(config), cwd=tmp_path)
    assert "already version 2" in cli("publish", str(config), cwd=tmp_path)
    cli("alias", "set", str(config), "live", "1", cwd=tmp_path)
    assert "ok:" in cli("validate", str(config), cwd=tmp_path)

    sent = [0]

    def feed(n: int = 10) -> None:
        append(config, [(f"k{i}", orjson.dumps({"v": i})) for i in range(sent[0], sent[0] + n)])
        sent[0] += n

    def marks() -> list[int]:
        return [batch[0]["mark"] for batch in batches(tmp_path)]

    def rolled_back() -> bool:
        """Some shard handled batches with version 1 after version 2 (keys sort by shard, then sequence)."""
        return any(_runs(history) == [1, 2, 1] and history[-2:] == [1, 1] for history in by_shard(tmp_path).values())

    proc = daemon(config)
    try:
        wait_for(lambda: 1 in marks(), feed)
        cli("alias", "set", str(config), "live", "2", cwd=tmp_path)
        wait_for(lambda: marks().count(2) >= 4, feed)
        cli("alias", "set", str(config), "live", "1", cwd=tmp_path)  # rollback
        wait_for(rolled_back, feed)
        wait_for(lambda: sum(len(b) for b in batches(tmp_path)) >= sent[0], lambda: None)
        assert proc.poll() is None, "the daemon kept running through both switches"
    finally:
        kill(proc, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    log = stderr.decode()
    assert "handler version 1 -> 2" in log and "handler version 2 -> 1" in log
    assert log.count("shard started") == 2, "no shard restarted"

    done = batches(tmp_path)
    for batch in done:
        assert len({item["mark"] for item in batch}) == 1, "a batch is handled wholly by one version"
        assert {item["version"] for item in batch} == {str(batch[0]["mark"])}
        assert batch[0]["arn"].endswith(":function:p:live")
    values = sorted(item["v"] for batch in done for item in batch)
    assert values == list(range(sent[0])), "nothing lost, nothing handled twice"
    for history in by_shard(tmp_path).values():
        assert _runs(history) in ([1], [1, 2], [1, 2, 1]), "each shard switched once, then rolled back once"

    listed = orjson.loads(cli("versions", str(config), "--json", cwd=tmp_path))
    assert listed["aliases"] == {"live": 1}
    assert [v["version"] for v in listed["versions"]] == [1, 2]
