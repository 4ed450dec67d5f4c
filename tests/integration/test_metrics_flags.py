"""``--metrics-port`` / ``--metrics-host`` override only what they name; the file's [metrics] settings stay."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from streamfn.cli import _metrics_config, build_parser
from streamfn.config import load_pipeline
from tests.pipelines import append, daemon, kill, write_pipeline

FAILING = """
def handle(batch, context):
    raise RuntimeError("always fails")
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def readyz(port: int) -> tuple[int, str] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return None  # not listening yet


def test_port_flag_keeps_the_files_other_metrics_settings(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, "def handle(batch, context):\n    return []\n",
                            extra="[metrics]\nready_max_blocked_seconds = 3\nhost = '0.0.0.0'\nport = 9999\n")
    loaded = [load_pipeline(config)]
    args = build_parser().parse_args(["run", str(config), "--metrics-port", "1234"])
    merged = _metrics_config(args, loaded)
    assert merged is not None
    assert (merged.enabled, merged.port, merged.ready_max_blocked_seconds) == (True, 1234, 3.0)
    args = build_parser().parse_args(["run", str(config), "--metrics-port", "1234", "--metrics-host", "::1"])
    merged = _metrics_config(args, loaded)
    assert merged is not None and merged.host == "::1" and merged.ready_max_blocked_seconds == 3.0
    assert _metrics_config(build_parser().parse_args(["run", str(config)]), loaded) is None  # not enabled in the file


def test_readyz_fails_after_the_files_threshold_when_run_with_metrics_port(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, FAILING, shards=1, extra="[metrics]\nready_max_blocked_seconds = 3\n")
    append(config, [("k", b'{"v": 1}')])
    port = free_port()
    process = daemon(config, "--metrics-port", str(port))
    seen: list[int] = []
    try:
        started = time.monotonic()
        answer = readyz(port)
        while not (answer and "blocked for" in answer[1]) and time.monotonic() - started < 20:
            seen += [answer[0]] if answer else []
            time.sleep(0.2)
            answer = readyz(port)
        waited = time.monotonic() - started
    finally:
        kill(process)
        process.wait(timeout=30)
    assert 200 in seen  # ready once started, before the threshold passed
    assert answer is not None and answer[0] == 503, answer
    assert "always fails" in answer[1]
    assert waited < 12  # the file's 3 s, not the 300 s default
