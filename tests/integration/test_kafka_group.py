"""Scale-out with Kafka's consumer group: two daemons split a topic's partitions, and when one is
killed with SIGKILL the other takes its partitions over from the committed offsets, losing nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from tests.integration.kafka_util import GROUP_SETTINGS, create_topic, numbered, produce, sink_lines, unique, wait_for

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 4


def write_config(folder: Path, bootstrap: str, topic: str, group: str) -> Path:
    settings = "\n".join(f"{key} = {value}" for key, value in GROUP_SETTINGS.items())
    path = folder / "pipeline.toml"
    path.write_text(f"""
name = "clicks"
handler = "tests.integration.kafka_util:slow_with_pid"
state_dir = "state"
shutdown_timeout = 10.0

[source]
type = "kafka"
bootstrap_servers = "{bootstrap}"
topic = "{topic}"
group_id = "{group}"
{settings}

[checkpoints]
type = "kafka"
without_commit_metadata = "accept"

[batching]
max_records = 10

[[sinks]]
type = "local"
path = "out"
""")
    return path


def start_daemon(config: Path, name: str) -> subprocess.Popen[bytes]:
    log = (config.parent / f"{name}.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "streamfn", "run", str(config)],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def handled(out: Path) -> dict[str, dict[int, set[int]]]:
    """shard -> offset -> pids that wrote it."""
    found: dict[str, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    for item in sink_lines(out):
        found[item["s"]][item["o"]].add(item["pid"])
    return found


async def test_two_daemons_split_the_partitions_and_one_takes_over_when_the_other_is_killed(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = await create_topic(kafka_bootstrap, PARTITIONS)
    await produce(kafka_bootstrap, topic, numbered(PARTITIONS, 300))
    config = write_config(tmp_path, kafka_bootstrap, topic, unique("g"))
    out = tmp_path / "out"
    first, second = start_daemon(config, "first"), start_daemon(config, "second")
    try:
        def both_working() -> bool:
            pids = {pid for offsets in handled(out).values() for pids in offsets.values() for pid in pids}
            return {first.pid, second.pid} <= pids

        await wait_for(both_working, 60, "both daemons to handle records", interval=0.25)
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
        await produce(kafka_bootstrap, topic, numbered(PARTITIONS, 100, start=300))

        def complete() -> bool:
            found = handled(out)
            return all(len(found[f"{topic}-{p}"]) == 400 for p in range(PARTITIONS))

        await wait_for(complete, 90, "the survivor to handle every record", interval=0.5)
        found = handled(out)
        for p in range(PARTITIONS):
            assert sorted(found[f"{topic}-{p}"]) == list(range(400))  # nothing lost
        first_had = [s for s, offsets in found.items() if any(first.pid in pids for pids in offsets.values())]
        assert first_had, "the killed daemon never owned a partition"
        for shard in first_had:  # what arrived after the kill on the dead daemon's partitions, the survivor did
            assert all(found[shard][o] == {second.pid} for o in range(300, 400))
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    await asyncio.sleep(0)
