"""Handler isolation and clean stops, through real `streamfn run` processes on the local log: a hung
plain function stalls only its shard, whatever a handler raises fails only its batch, and a clean
drain exits without an abandoned-call warning."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest

from streamfn.connectors.local.log import LocalLog
from tests.pipelines import append, daemon, kill, output_objects, write_pipeline

HANGS_ON_ONE_RECORD = """
import threading

FOREVER = threading.Event()

def handle(batch, context):
    values = [record.json()["v"] for record in batch.records]
    if -1 in values:
        FOREVER.wait()  # a plain function that never returns: its thread cannot be stopped
    return [{"v": v} for v in values]
"""


def handled_values(folder: Path) -> Counter[int]:
    return Counter(item["v"] for items in output_objects(folder / "out").values() for item in items)


def shard_of_each_value(folder: Path) -> dict[int, str]:
    log = LocalLog(folder / "state" / "log.sqlite3")
    try:
        shards = log.shard_ids("s")
        return {orjson.loads(r.data)["v"]: shard for shard in shards for r in log.read("s", shard, 0, 10**9)}
    finally:
        log.close()


def wait_until_handled(folder: Path, expected: set[int], within: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + within
    while not expected <= set(handled_values(folder)):
        assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
        if time.monotonic() > deadline:
            missing = expected - set(handled_values(folder))
            raise AssertionError(f"{len(missing)} records never handled, e.g. {sorted(missing)[:10]}")
        time.sleep(0.2)


def test_a_plain_handler_hung_on_one_of_40_shards_stalls_only_that_shard(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, HANGS_ON_ONE_RECORD, shards=40,
                            extra="timeout = 1\nshutdown_timeout = 1.0")
    append(config, [("hang-key", orjson.dumps({"v": -1}))])
    append(config, [(f"k{i}", orjson.dumps({"v": i})) for i in range(400)])
    proc = daemon(config)
    try:
        hung = shard_of_each_value(tmp_path)[-1]
        first = {v for v, shard in shard_of_each_value(tmp_path).items() if shard != hung}
        wait_until_handled(tmp_path, first, 30, proc)
        time.sleep(3)  # the hung batch times out, is retried, times out again...
        append(config, [(f"k{i}", orjson.dumps({"v": i})) for i in range(400, 800)])
        second = {v for v, shard in shard_of_each_value(tmp_path).items() if shard != hung} - first
        assert len(second) > 350
        wait_until_handled(tmp_path, second, 30, proc)  # healthy shards keep going
    finally:
        started = time.monotonic()
        kill(proc, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert time.monotonic() - started < 15
    assert b"handler timed out after 1s" in err
    assert b"abandoned handler call(s) still running" in err  # the one call that is really running
    handled = handled_values(tmp_path)
    assert -1 not in handled
    assert all(count == 1 for count in handled.values())


RAISES_ON_FIRST_ATTEMPT = """
import sys

def fail(shard_id):
    kind = int(shard_id[-1]) % 3
    if kind == 0:
        sys.exit(3)
    if kind == 1:
        raise KeyboardInterrupt
    raise BaseException("a bare BaseException")

{define} handle(batch, context):
    if context.attempt == 0:
        fail(batch.shard_id)
    return [{{"v": record.json()["v"]}} for record in batch.records]
"""


@pytest.mark.parametrize("define", ["def", "async def"], ids=["plain", "async"])
def test_system_exit_and_keyboard_interrupt_in_a_handler_fail_only_the_batch(tmp_path: Path, define: str) -> None:
    config = write_pipeline(tmp_path, RAISES_ON_FIRST_ATTEMPT.format(define=define), shards=3)
    append(config, [(f"k{i}", orjson.dumps({"v": i})) for i in range(90)])
    done = subprocess.run([sys.executable, "-m", "streamfn", "run", str(config), "--until-caught-up"],
                          cwd=tmp_path, capture_output=True, timeout=60, check=False)
    err = done.stderr.decode()
    assert done.returncode == 0, err[-3000:]
    for raised in ("handler raised SystemExit: 3", "handler raised KeyboardInterrupt", "handler raised BaseException"):
        assert raised in err
    assert handled_values(tmp_path) == Counter(range(90))  # each batch succeeded on its retry, once


QUICK = """
def handle(batch, context):
    return [{"v": record.json()["v"]} for record in batch.records]
"""


def _clean_runs(folder: Path, runs: int) -> list[str]:
    """``runs`` drains of fresh records in one pipeline; the stderr of each that warned or failed.

    16 shards put up to 16 threads to work: counting idle threads (the old check) warned on
    1 run of 20 here."""
    config = write_pipeline(folder, QUICK, shards=16)
    bad = []
    for run in range(runs):
        append(config, [(f"k{i}", orjson.dumps({"v": run * 1000 + i})) for i in range(160)])
        done = subprocess.run([sys.executable, "-m", "streamfn", "run", str(config), "--until-caught-up"],
                              cwd=folder, capture_output=True, timeout=60, check=False)
        if done.returncode != 0 or b"abandoned" in done.stderr:
            bad.append(f"exit {done.returncode}: {done.stderr.decode()[-1500:]}")
    assert handled_values(folder) == Counter(run * 1000 + i for run in range(runs) for i in range(160))
    return bad


def test_twenty_clean_drains_exit_0_without_an_abandoned_call_warning(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda n: _clean_runs(tmp_path / f"p{n}", 10), range(2)))
    bad = [failure for failures in results for failure in failures]
    assert bad == []
