"""What a supervisor sees of a real ``streamfn run``: sd_notify readiness, ``--version``, build info."""

from __future__ import annotations

import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

import streamfn
from tests.pipelines import append, daemon, kill, write_pipeline

ECHO = """
def handle(batch, context):
    return [{"seq": r.sequence} for r in batch]
"""


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A unix datagram socket of the test's own, as systemd would pass in NOTIFY_SOCKET.

    Made under a short temp dir: a unix socket path must fit in 108 bytes.
    """
    folder = tempfile.mkdtemp(prefix="sfn-")
    path = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    try:
        yield sock, path
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(folder)


def stderr_of(process: subprocess.Popen[bytes]) -> str:
    kill(process)
    _, err = process.communicate(timeout=10)
    return err.decode(errors="replace")


def test_run_says_ready_once_started_and_stopping_on_sigterm(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    config = write_pipeline(tmp_path / "p", ECHO, shards=2)
    append(config, [(f"k{i}", orjson.dumps({"v": i})) for i in range(20)])
    process = daemon(config, env={"NOTIFY_SOCKET": path})
    try:
        try:
            ready = sock.recv(4096)
        except TimeoutError:
            pytest.fail(f"no READY=1 within 30 s; stderr:\n{stderr_of(process)}")
        assert ready == b"READY=1"
        assert process.poll() is None, "READY=1 is sent by a daemon that goes on running"
        # nothing more is said while it runs
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(4096)
        sock.settimeout(30)
        os.killpg(process.pid, signal.SIGTERM)
        assert sock.recv(4096) == b"STOPPING=1"
        assert process.wait(timeout=30) == 0
    finally:
        kill(process)
        process.communicate(timeout=10)


def test_run_without_notify_socket_sends_nothing_and_runs(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path / "p", ECHO, shards=1)
    append(config, [("k", b"{}")] * 5)
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    result = subprocess.run([sys.executable, "-m", "streamfn", "run", str(config), "--until-caught-up"],
                            cwd=config.parent, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "NOTIFY_SOCKET" not in result.stderr


def test_run_with_a_dead_notify_socket_still_runs(tmp_path: Path) -> None:
    """A supervisor that went away must not stop the pipelines: the failed send is only logged."""
    config = write_pipeline(tmp_path / "p", ECHO, shards=1)
    append(config, [("k", b"{}")] * 5)
    gone = str(tmp_path / "gone.sock")
    result = subprocess.run([sys.executable, "-m", "streamfn", "run", str(config), "--until-caught-up"],
                            cwd=config.parent, env={**os.environ, "NOTIFY_SOCKET": gone},
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "READY=1" in result.stderr and gone in result.stderr


def test_version_flag_prints_the_package_version() -> None:
    result = subprocess.run([sys.executable, "-m", "streamfn", "--version"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"streamfn {streamfn.__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", streamfn.__version__)


def test_metrics_has_build_info(tmp_path: Path, notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_pipeline(tmp_path / "p", ECHO, shards=1)
    process = daemon(config, "--metrics-port", str(port), env={"NOTIFY_SOCKET": path})
    try:
        assert sock.recv(4096) == b"READY=1"  # the endpoint listens before the pipelines are opened
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    text = response.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        line = f'streamfn_build_info{{python="{platform.python_version()}",version="{streamfn.__version__}"}} 1.0'
        assert line in text.splitlines()
        assert "# TYPE streamfn_build_info gauge" in text
    finally:
        kill(process, signal.SIGTERM)
        process.communicate(timeout=30)
