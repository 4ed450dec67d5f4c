"""``streamfn checkpoints show|reset|set`` on a Kafka group's committed offsets (a real Tansu broker)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson

from tests.integration.kafka_util import (
    ACCEPT_LOST_METADATA_TOML,
    GROUP_SETTINGS,
    committed_offsets,
    create_topic,
    unique,
)
from tests.integration.test_kafka_checkpoints import broker_keeps_commit_metadata

HANDLER = """
from pathlib import Path

def handle(batch, context):
    with Path(__file__).with_name("handled.txt").open("a") as out:
        out.writelines(f"{context.shard_id} {r.json()['n']}\\n" for r in batch)
"""


async def produce_one_by_one(bootstrap: str, topic: str, records: list[tuple[int, bytes]]) -> None:
    """Each record in a batch of its own: Tansu reports the log end of batched produces short."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        for partition, value in records:
            await (await producer.send(topic, value, key=b"k", partition=partition))
    finally:
        await producer.stop()


def pipeline(folder: Path, bootstrap: str, topic: str, group: str) -> Path:
    (folder / "kafka_cp_handler.py").write_text(HANDLER)
    config = folder / "pipeline.toml"
    settings = "".join(f"{key} = {value}\n" for key, value in GROUP_SETTINGS.items())
    config.write_text(f'name = "kcp"\nhandler = "kafka_cp_handler:handle"\nstate_dir = "state"\n'
                      f'[source]\ntype = "kafka"\nbootstrap_servers = "{bootstrap}"\ntopic = "{topic}"\n'
                      f'group_id = "{group}"\n{settings}{ACCEPT_LOST_METADATA_TOML}')
    return config


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamfn", *args[:1], *args[1:2], str(config), *args[2:]],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ), cwd=config.parent)


def test_show_set_and_reset_a_groups_offsets(tmp_path: Path, kafka_bootstrap: str) -> None:
    topic = asyncio.run(create_topic(kafka_bootstrap, partitions=2, prefix="cp"))
    group = unique("g")
    sent_at = time.time()
    asyncio.run(produce_one_by_one(kafka_bootstrap, topic, [(p, orjson.dumps({"n": n})) for n in range(10)
                                                            for p in range(2)]))
    config = pipeline(tmp_path, kafka_bootstrap, topic, group)

    def offsets() -> dict[int, int | None]:
        return asyncio.run(committed_offsets(kafka_bootstrap, group, topic, 2))

    shown = cli(config, "checkpoints", "show")
    assert shown.returncode == 0, shown.stderr
    assert f"{topic}-0" in shown.stdout and f"{topic}-1" in shown.stdout and "offsets 0..9" in shown.stdout
    dropped = not asyncio.run(broker_keeps_commit_metadata(kafka_bootstrap, topic))  # Tansu drops it
    assert ("broker drops commit metadata" in shown.stdout) == dropped, shown.stdout

    done = cli(config, "checkpoints", "set", "--shard", f"{topic}-0", "--sequence", "4")
    assert done.returncode == 0, done.stderr
    assert offsets() == {0: 5, 1: None}, "resume strictly after 4: the next offset to read is 5"

    for bad in (["--sequence", "10"], ["--sequence", "-1"]):
        refused = cli(config, "checkpoints", "set", "--shard", f"{topic}-0", *bad)
        assert refused.returncode != 0 and ("no offset 10" in refused.stderr or "negative" in refused.stderr)
    assert cli(config, "checkpoints", "set", "--shard", f"{topic}-7", "--sequence", "1").returncode != 0

    dry = cli(config, "checkpoints", "reset", "--to", "latest", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would reset 2 shard(s)" in dry.stdout and "-> 9" in dry.stdout
    assert offsets() == {0: 5, 1: None}, "a dry run writes nothing"

    assert cli(config, "checkpoints", "reset", "--to", "latest").returncode == 0
    assert offsets() == {0: 10, 1: 10}
    assert cli(config, "checkpoints", "reset", "--to", repr(sent_at - 60), "--shard", f"{topic}-1").returncode == 0
    assert offsets() == {0: 10, 1: 0}, "a time before every record: the partition's first offset"

    run = subprocess.run([sys.executable, "-m", "streamfn", "run", str(config), "--until-caught-up"],
                         capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    handled = sorted((tmp_path / "handled.txt").read_text().splitlines())
    assert handled == sorted(f"{topic}-1 {n}" for n in range(10)), "partition 0 at its end, partition 1 from 0"


def test_an_active_group_member_refuses_the_edit_unless_forced(tmp_path: Path, kafka_bootstrap: str) -> None:
    topic = asyncio.run(create_topic(kafka_bootstrap, partitions=1, prefix="cpa"))
    group = unique("g")
    asyncio.run(produce_one_by_one(kafka_bootstrap, topic, [(0, orjson.dumps({"n": n})) for n in range(5)]))
    config = pipeline(tmp_path, kafka_bootstrap, topic, group)
    (tmp_path / "slow_handler.py").write_text("import time\ndef handle(batch, context):\n    time.sleep(60)\n")
    config.write_text(config.read_text().replace("kafka_cp_handler:handle", "slow_handler:handle"))
    daemon = subprocess.Popen([sys.executable, "-m", "streamfn", "run", str(config)], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            shown = cli(config, "checkpoints", "show")
            if "1 member(s)" in shown.stdout:
                break
            assert time.monotonic() < deadline, f"the daemon never joined its group: {shown.stdout}{shown.stderr}"
            time.sleep(0.5)
        refused = cli(config, "checkpoints", "reset", "--to", "latest")
        assert refused.returncode == 1
        assert "active member" in refused.stderr and group in refused.stderr
        dry = cli(config, "checkpoints", "reset", "--to", "latest", "--dry-run")
        assert dry.returncode == 0 and "-> 4" in dry.stdout, "a dry run only reads: allowed while the group runs"
    finally:
        os.killpg(daemon.pid, 9)
        daemon.wait(timeout=10)
