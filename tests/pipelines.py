"""Helpers for tests that run real pipelines on the embedded local log (in-process or as a daemon)."""

from __future__ import annotations

import asyncio
import os
import pty
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from streamfn.config import LoadedPipeline, load_pipeline
from streamfn.connectors.local.log import LocalLog
from streamfn.connectors.local.source import LocalSourceConfig
from streamfn.engine.daemon import run_pipelines

REPO = Path(__file__).resolve().parent.parent


def write_pipeline(
    folder: Path,
    handler_code: str,
    *,
    name: str = "p",
    shards: int = 4,
    extra: str = "",
    batching: str = "max_records = 10",
    sinks: str = '[[sinks]]\ntype = "local"\npath = "out"\nfsync = false\n',
    handler_module: str | None = None,
) -> Path:
    """A pipeline folder: ``pipeline.toml`` plus the handler module beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    module = handler_module or f"handler_{folder.name.replace('-', '_')}_{abs(hash(str(folder))) % 10**8}"
    (folder / f"{module}.py").write_text(textwrap.dedent(handler_code))
    config = folder / "pipeline.toml"
    config.write_text(
        f'name = "{name}"\nhandler = "{module}:handle"\nstate_dir = "state"\n{extra}\n'
        f'[source]\ntype = "local"\nstream = "s"\nshards = {shards}\n'
        f"[batching]\n{batching}\n[retry]\ninitial_delay = 0.01\nmax_delay = 0.05\n{sinks}"
    )
    return config


def append(config: Path, records: Iterable[tuple[str, bytes]], arrival_time: float | None = None) -> int:
    loaded = load_pipeline(config)
    source = loaded.config.source
    assert isinstance(source, LocalSourceConfig)
    log = LocalLog(loaded.context.state_dir / "log.sqlite3")
    try:
        log.create_stream(source.stream, source.shards)
        return log.append(source.stream, list(records), arrival_time=arrival_time)
    finally:
        log.close()


def run_until_caught_up(*configs: Path, timeout: float = 60.0) -> None:
    loaded: list[LoadedPipeline] = [load_pipeline(c) for c in configs]

    async def main() -> None:
        async with asyncio.timeout(timeout):
            await run_pipelines(loaded, until_caught_up=True, handle_signals=False)

    asyncio.run(main())


def output_objects(folder: Path) -> dict[str, list[Any]]:
    """Every finished object under ``folder`` (temp files of an interrupted write excluded)."""
    objects = {}
    for path in sorted(folder.rglob("*.ndjson")):
        if path.name.startswith(".tmp-"):
            continue
        objects[str(path.relative_to(folder))] = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    return objects


class DrainedProcess(subprocess.Popen[bytes]):
    """A child whose stdout and stderr are read as they come: a daemon logging more than a pipe
    holds (64 KiB) while a test waits on it would otherwise block mid-write. ``communicate`` returns
    everything it wrote."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._captured: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        pipes = {"stdout": self.stdout, "stderr": self.stderr}
        self._drains = [threading.Thread(target=_drain, args=(pipes[name], into), daemon=True)
                        for name, into in self._captured.items() if pipes[name] is not None]
        for drain in self._drains:
            drain.start()

    def communicate(self, input: bytes | None = None, timeout: float | None = None) -> tuple[bytes, bytes]:
        self.wait(timeout)
        for drain in self._drains:
            drain.join(timeout)
        return bytes(self._captured["stdout"]), bytes(self._captured["stderr"])


def _drain(pipe: Any, into: bytearray) -> None:
    for chunk in iter(lambda: pipe.read1(65536), b""):
        into += chunk


def daemon(config: Path, *args: str, env: dict[str, str] | None = None) -> DrainedProcess:
    return DrainedProcess(
        [sys.executable, "-m", "streamfn", "run", str(config), *args],
        cwd=config.parent,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def kill(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)


def append_at(config: Path, groups: Iterable[tuple[float | None, list[tuple[str, bytes]]]]) -> int:
    """Append each group of records with its own arrival time (None: now), opening the log once:
    tumbling windows are cut by arrival time, so tests place records in the windows they want."""
    loaded = load_pipeline(config)
    source = loaded.config.source
    assert isinstance(source, LocalSourceConfig)
    log = LocalLog(loaded.context.state_dir / "log.sqlite3")
    try:
        log.create_stream(source.stream, source.shards)
        return sum(log.append(source.stream, records, arrival_time=arrival) for arrival, records in groups)
    finally:
        log.close()


def stderr_on_a_terminal(cwd: Path, *args: str) -> str:
    """Run ``python -m streamfn ARGS`` with its stderr on a pseudo-terminal (as an operator's shell
    has it); what the terminal showed. The command must exit 0."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        process = subprocess.Popen([sys.executable, "-m", "streamfn", *args], cwd=cwd, env=env,
                                   stdout=subprocess.DEVNULL, stderr=terminal)
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        assert process.wait(timeout=60) == 0
    finally:
        os.close(controller)
    return shown.decode()
