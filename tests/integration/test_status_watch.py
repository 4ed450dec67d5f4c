"""``streamfn status --watch`` in a real terminal (a pty) beside a real running daemon."""

from __future__ import annotations

import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from streamfn.ops.watch import CLEAR
from tests.pipelines import append, daemon, kill, write_pipeline

SLOW = """
import time

def handle(batch, context):
    time.sleep(0.03)
    return [r.json() for r in batch]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def frames_of(text: str) -> list[str]:
    return [frame for frame in text.replace("\r", "").split(CLEAR) if frame.strip()]


def table(frame: str) -> dict[str, list[str]]:
    """Shard rows of one frame by shard id, each as its columns."""
    rows = [line.split() for line in frame.splitlines() if line.startswith("p ")]
    return {row[1]: row for row in rows}


def test_watch_redraws_records_per_second_and_lag_from_the_daemon(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, SLOW, shards=2)
    append(config, [(f"k{i}", orjson.dumps({"v": i})) for i in range(600)])
    port = free_port()
    running = daemon(config, "--metrics-port", str(port))
    master, replica = pty.openpty()
    watcher = subprocess.Popen(
        [sys.executable, "-m", "streamfn", "status", str(config), "--watch", "--interval", "0.2",
         "--metrics-url", f"http://127.0.0.1:{port}"],
        stdin=replica, stdout=replica, stderr=replica, cwd=tmp_path, start_new_session=True)
    os.close(replica)
    seen = ""
    try:
        deadline = time.monotonic() + 60
        moving = settled = False
        while not (moving and settled):
            if time.monotonic() > deadline:
                pytest.fail(f"no frame showed the shards moving and then caught up:\n{seen[-3000:]}")
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(master, 65536).decode(errors="replace")
                except OSError:
                    break
            for frame in frames_of(seen):
                rows = table(frame)
                if set(rows) == {"shard-0000", "shard-0001"}:
                    rates = [row[2] for row in rows.values()]
                    moving = moving or any(rate not in ("-", "0") for rate in rates)
                    settled = moving and all(row[3] == "0" and row[5] == "no" for row in rows.values())
        assert seen.count(CLEAR) >= 3, "each refresh clears the terminal and redraws"
        header = next(f for f in frames_of(seen) if "REC/S" in f)
        for column in ("REC/S", "LAG", "ITER AGE", "BLOCKED", "ERRORS"):
            assert column in header
        os.kill(watcher.pid, signal.SIGINT)
        assert watcher.wait(timeout=10) == 0, "Ctrl-C ends the watch quietly"
        assert "Traceback" not in seen
    finally:
        kill(watcher)
        watcher.wait(timeout=10)
        os.close(master)
        kill(running)
        running.communicate(timeout=10)


def test_watch_says_when_no_daemon_answers(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, SLOW, shards=1)
    url = f"http://127.0.0.1:{free_port()}"
    master, replica = pty.openpty()
    watcher = subprocess.Popen([sys.executable, "-m", "streamfn", "status", str(config), "--watch", "--interval",
                                "0.1", "--metrics-url", url], stdin=replica, stdout=replica, stderr=replica,
                               cwd=tmp_path, start_new_session=True)
    os.close(replica)
    seen = ""
    try:
        deadline = time.monotonic() + 30
        while "no daemon answered" not in seen:
            assert time.monotonic() < deadline, seen
            if select.select([master], [], [], 0.5)[0]:
                seen += os.read(master, 65536).decode(errors="replace")
        assert not (tmp_path / "state").exists(), "read-only: no state created"
    finally:
        kill(watcher)
        watcher.wait(timeout=10)
        os.close(master)
