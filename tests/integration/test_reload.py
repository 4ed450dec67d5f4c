"""SIGHUP through a real ``streamfn run``: changed files restart their pipelines with the new settings,
invalid ones are refused while the old pipeline runs on, new and removed files start and stop pipelines."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from tests.pipelines import append, kill, output_objects

HANDLER = """
import os
import time

def handle(batch, context):
    time.sleep(float(os.environ.get("BATCH_SLEEP", "0")))
    return [{"seq": r.sequence, "v": r.json()["v"]} for r in batch]
"""


def write(conf: Path, name: str, *, max_records: int, into: Path | None = None) -> Path:
    """``conf/NAME.toml`` (or in ``into``): one shard, state and output in ``conf`` by absolute paths."""
    folder = into or conf
    (folder / "reload_handler.py").write_text(HANDLER)
    path = folder / f"{name}.toml"
    path.write_text(f'name = "{name}"\nhandler = "reload_handler:handle"\nstate_dir = "{conf}/state-{name}"\n'
                    f'[source]\ntype = "local"\nstream = "s"\nshards = 1\n'
                    f'[batching]\nmax_records = {max_records}\n'
                    f'[[sinks]]\ntype = "local"\npath = "{conf}/out-{name}"\nfsync = false\n')
    return path


def records(start: int, count: int) -> list[tuple[str, bytes]]:
    return [(f"k{i}", orjson.dumps({"v": i})) for i in range(start, start + count)]


def handled(conf: Path, name: str) -> list[list[int]]:
    """The values of each output object of pipeline ``name``, in key order."""
    return [[item["v"] for item in items] for items in output_objects(conf / f"out-{name}").values()]


def wait_for(condition: Callable[[], bool], what: str, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; daemon log:\n{log.read_text()}")
        time.sleep(0.05)


class Daemon:
    def __init__(self, conf: Path, *targets: str, env: dict[str, str] | None = None) -> None:
        self.log = conf.parent / "daemon.log"
        self._err = self.log.open("wb")
        self.process = subprocess.Popen([sys.executable, "-m", "streamfn", "run", *targets], cwd=conf,
                                        stdout=subprocess.DEVNULL, stderr=self._err, start_new_session=True,
                                        env={**os.environ, **(env or {})})

    def hangup_and_wait(self) -> None:
        """Send SIGHUP and wait for the reload it starts to finish."""
        done = self.text().count("msg=reloaded ")
        os.kill(self.process.pid, signal.SIGHUP)
        wait_for(lambda: self.text().count("msg=reloaded ") > done, "the reload", self.log)

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        os.kill(self.process.pid, signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self._err.close()
        return code


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    folder = tmp_path / "conf"
    folder.mkdir()
    return folder


@pytest.fixture
def running(conf: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(*targets: str, env: dict[str, str] | None = None) -> Daemon:
        started.append(Daemon(conf, *targets, env=env))
        return started[-1]

    yield start
    for process in started:
        kill(process.process)
        process.process.wait(timeout=10)


def test_a_changed_file_restarts_its_pipeline_with_the_new_batching(conf: Path,
                                                                    running: Callable[..., Daemon]) -> None:
    path = write(conf, "a", max_records=10)
    append(path, records(0, 100))
    daemon = running(str(path))
    wait_for(lambda: sum(map(len, handled(conf, "a"))) == 100, "the first 100 records", daemon.log)
    assert {len(obj) for obj in handled(conf, "a")} == {10}

    write(conf, "a", max_records=50)
    daemon.hangup_and_wait()
    append(path, records(100, 100))
    wait_for(lambda: sum(map(len, handled(conf, "a"))) == 200, "the next 100 records", daemon.log)
    assert daemon.stop() == 0

    objects = handled(conf, "a")
    after = [obj for obj in objects if obj[0] >= 100]
    assert [len(obj) for obj in after] == [50, 50], "the new batching took effect"
    counts = Counter(v for obj in objects for v in obj)
    assert sorted(counts) == list(range(200)) and set(counts.values()) == {1}, "nothing lost or duplicated"
    assert "restart" in daemon.text() and "a.toml" in daemon.text()


def test_a_reload_while_batches_are_in_flight_loses_and_repeats_nothing(conf: Path,
                                                                         running: Callable[..., Daemon]) -> None:
    path = write(conf, "a", max_records=10)
    append(path, records(0, 400))
    daemon = running(str(path), env={"BATCH_SLEEP": "0.02"})
    wait_for(lambda: sum(map(len, handled(conf, "a"))) >= 50, "the first batches", daemon.log)
    write(conf, "a", max_records=40)
    daemon.hangup_and_wait()
    wait_for(lambda: sum(map(len, handled(conf, "a"))) == 400, "every record", daemon.log)
    assert daemon.stop() == 0
    objects = handled(conf, "a")
    counts = Counter(v for obj in objects for v in obj)
    assert sorted(counts) == list(range(400)) and set(counts.values()) == {1}, "nothing lost or duplicated"
    sizes = [len(obj) for obj in sorted(objects, key=lambda obj: obj[0])]
    assert 40 in sizes and sizes[0] == 10, "batches of 10 before the reload, of up to 40 after"
    assert set(sizes[:-1]) <= {10, 40}, "no batch cut short by the restart"


def test_an_invalid_file_is_refused_and_the_old_pipeline_runs_on(conf: Path, running: Callable[..., Daemon]) -> None:
    path = write(conf, "a", max_records=10)
    daemon = running(str(path))
    wait_for(lambda: "msg=running" in daemon.text(), "the start", daemon.log)

    path.write_text(path.read_text().replace("max_records = 10", "max_records = -3"))
    daemon.hangup_and_wait()
    assert "max_records" in daemon.text() and "refused" in daemon.text()
    elsewhere = conf.parent / "elsewhere"
    elsewhere.mkdir()
    append(write(conf, "a", max_records=10, into=elsewhere), records(0, 30))  # the same log, a valid file
    wait_for(lambda: sum(map(len, handled(conf, "a"))) == 30, "records handled by the old pipeline", daemon.log)
    assert {len(obj) for obj in handled(conf, "a")} == {10}, "still the old settings"
    assert daemon.process.poll() is None
    assert daemon.stop() == 0


def test_files_added_to_and_removed_from_the_directory_start_and_stop_pipelines(
    conf: Path, running: Callable[..., Daemon]
) -> None:
    first = write(conf, "a", max_records=10)
    daemon = running(str(conf))
    wait_for(lambda: "msg=running" in daemon.text(), "the start", daemon.log)

    second = write(conf, "b", max_records=5)
    append(second, records(0, 20))
    daemon.hangup_and_wait()
    wait_for(lambda: sum(map(len, handled(conf, "b"))) == 20, "pipeline b, started by the reload", daemon.log)
    assert {len(obj) for obj in handled(conf, "b")} == {5}

    first.unlink()
    daemon.hangup_and_wait()
    elsewhere = conf.parent / "elsewhere"
    elsewhere.mkdir()
    append(write(conf, "a", max_records=10, into=elsewhere), records(0, 10))  # a's log, its file not in conf
    append(conf / "b.toml", records(20, 5))
    wait_for(lambda: sum(map(len, handled(conf, "b"))) == 25, "pipeline b going on", daemon.log)
    assert handled(conf, "a") == [], "pipeline a stopped with its file removed"
    assert daemon.stop() == 0


def test_a_reload_tells_systemd_reloading_then_ready(conf: Path, running: Callable[..., Daemon]) -> None:
    folder = tempfile.mkdtemp(prefix="sfn-")  # a unix socket path must fit in 108 bytes
    address = os.path.join(folder, "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(30)
        try:
            path = write(conf, "a", max_records=10)
            daemon = running(str(path), env={"NOTIFY_SOCKET": address})
            assert sock.recv(4096) == b"READY=1"
            write(conf, "a", max_records=20)
            os.kill(daemon.process.pid, signal.SIGHUP)
            reloading = sock.recv(4096).decode()
            assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=") and int(reloading.rsplit("=", 1)[1]) > 0
            assert sock.recv(4096) == b"READY=1", "READY=1 again once the reload is done"
            assert daemon.stop() == 0
        finally:
            os.unlink(address)
            os.rmdir(folder)


def test_two_files_naming_one_pipeline_are_refused(conf: Path) -> None:
    write(conf, "a", max_records=10)
    (conf / "copy.toml").write_text((conf / "a.toml").read_text())
    done = subprocess.run([sys.executable, "-m", "streamfn", "run", str(conf), "--until-caught-up"], cwd=conf,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "already defined in" in done.stderr and "copy.toml" in done.stderr
    checked = subprocess.run([sys.executable, "-m", "streamfn", "validate", str(conf)], cwd=conf, capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0 and "a.toml" in checked.stdout and "copy.toml" in checked.stdout, "validate DIR"
    empty = conf.parent / "empty"
    empty.mkdir()
    none = subprocess.run([sys.executable, "-m", "streamfn", "run", str(empty)], cwd=conf, capture_output=True,
                          text=True, timeout=60)
    assert none.returncode == 2 and "no pipeline files" in none.stderr
