"""The local log across processes: reading while another process appends, and kill -9 durability."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from streamfn.connectors.local.log import LocalLog

# Appends numbered records in batches forever, printing the last number after each commit.
WRITER = """
import sys
import time
from pathlib import Path
from streamfn.connectors.local.log import LocalLog

log = LocalLog(Path(sys.argv[1]))
log.create_stream("s", 3)
batch, limit, pause = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
n = 0
while limit < 0 or n < limit:
    log.append("s", [(f"user-{i % 97}", str(i).encode()) for i in range(n, n + batch)])
    n += batch
    print(n, flush=True)
    time.sleep(pause)
"""


def start_writer(path: Path, batch: int, limit: int, pause: float = 0.0) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(batch), str(limit), str(pause)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def read_all(log: LocalLog) -> dict[str, list[tuple[int, bytes]]]:
    out: dict[str, list[tuple[int, bytes]]] = {}
    for shard in log.shard_ids("s"):
        out[shard] = [(r.sequence, r.data) for r in log.read("s", shard, 0, 10**9)]
    return out


def assert_gapless(shards: dict[str, list[tuple[int, bytes]]]) -> list[int]:
    """Per shard, sequences are 1..n with no gap or duplicate; returns every record's number."""
    numbers: list[int] = []
    for records in shards.values():
        assert [seq for seq, _ in records] == list(range(1, len(records) + 1))
        numbers.extend(int(data) for _, data in records)
    return numbers


def test_a_reader_follows_another_process_appending(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    writer = start_writer(path, batch=50, limit=5000, pause=0.005)
    try:
        while not path.exists():
            time.sleep(0.01)
        log = LocalLog(path)
        while "s" not in log.streams():
            time.sleep(0.01)
        positions = dict.fromkeys(log.shard_ids("s"), 0)
        seen: list[int] = []
        reads_during_writes = 0
        deadline = time.monotonic() + 60
        while len(seen) < 5000 and time.monotonic() < deadline:
            for shard, after in positions.items():
                records = log.read("s", shard, after, 300)
                if records:
                    assert [r.sequence for r in records] == list(range(after + 1, after + 1 + len(records)))
                    positions[shard] = records[-1].sequence
                    seen.extend(int(r.data) for r in records)
                    reads_during_writes += writer.poll() is None
        assert writer.wait(timeout=30) == 0
        assert sorted(seen) == list(range(5000))
        assert reads_during_writes > 0
        log.close()
    finally:
        writer.kill()
        writer.wait()


def test_every_reported_append_survives_kill_9_of_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    writer = start_writer(path, batch=37, limit=-1)
    assert writer.stdout is not None
    committed = 0
    try:
        # Let it commit a few hundred batches, then kill it wherever it is.
        while committed < 37 * 300:
            line = writer.stdout.readline()
            assert line, "writer exited early"
            committed = int(line)
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    # Lines printed before the kill but not read yet are commits too.
    for line in writer.stdout.read().split():
        committed = int(line)

    log = LocalLog(path)
    numbers = assert_gapless(read_all(log))
    # Everything reported is there, once; at most the batch in flight at the kill is extra.
    assert sorted(numbers)[:committed] == list(range(committed))
    assert len(numbers) in (committed, committed + 37)
    assert sorted(numbers) == list(range(len(numbers)))
    # The log still takes writes after the crash, continuing every shard's sequence.
    log.append("s", [(f"user-{i}", b"-1") for i in range(97)])
    assert_gapless({k: [(s, b"0") for s, _ in v] for k, v in read_all(log).items()})
    log.close()


def test_a_reader_killed_mid_read_leaves_the_log_usable(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    log = LocalLog(path)
    log.create_stream("s", 3)
    log.append("s", [(f"user-{i % 97}", str(i).encode()) for i in range(20_000)])
    reader_code = (
        "import sys\nfrom pathlib import Path\nfrom streamfn.connectors.local.log import LocalLog\n"
        "log = LocalLog(Path(sys.argv[1]))\nprint('ready', flush=True)\n"
        "while True:\n    log.read('s', 'shard-0000', 0, 10**6)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    reader = subprocess.Popen(
        [sys.executable, "-c", reader_code, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert reader.stdout is not None
    assert reader.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    reader.send_signal(signal.SIGKILL)
    reader.wait()
    assert log.append("s", [("user-1", b"20000")]) == 1
    assert sorted(assert_gapless(read_all(log))) == list(range(20_001))
    log.close()
