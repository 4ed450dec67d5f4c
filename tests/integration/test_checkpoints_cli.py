"""``streamfn checkpoints show|reset|set`` on a real lease table (moto server's DynamoDB)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import orjson

from tests.pipelines import append, run_until_caught_up, write_pipeline

ECHO = """
from pathlib import Path

def handle(batch, context):
    with Path(__file__).with_name("handled.txt").open("a") as out:
        out.writelines(f"{r.json()['v']}\\n" for r in batch)
"""


def handled(folder: Path) -> list[int]:
    path = folder / "handled.txt"
    return sorted(int(line) for line in path.read_text().split()) if path.exists() else []


def cli(config: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamfn", "checkpoints", *args, str(config)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **env})


def test_show_reset_and_set(tmp_path: Path, moto_endpoint: str, aws_env: dict[str, str]) -> None:
    table = f"leases-{uuid.uuid4().hex[:8]}"
    config = write_pipeline(tmp_path, ECHO, shards=2, sinks="",
                            extra=f'[checkpoints]\ntype = "dynamodb"\ntable = "{table}"\n'
                                  f'endpoint_url = "{moto_endpoint}"\nfailover_time = 2.0\n')
    append(config, [(f"k{i}", orjson.dumps({"v": i})) for i in range(40)])
    run_until_caught_up(config)
    assert handled(tmp_path) == list(range(40))

    shown = cli(config, "show", env=aws_env)
    assert shown.returncode == 0, shown.stderr
    assert "shard-0000" in shown.stdout and "shard-0001" in shown.stdout
    assert "TRIM_HORIZON" not in shown.stdout

    reset = cli(config, "reset", "--to", "trim_horizon", env=aws_env)
    assert reset.returncode == 0, reset.stderr
    assert "reset 2 shard(s)" in reset.stdout
    assert cli(config, "show", env=aws_env).stdout.count("TRIM_HORIZON") == 2

    changed = cli(config, "set", "--shard", "shard-0001", "--sequence", "7", env=aws_env)
    assert changed.returncode == 0, changed.stderr
    rows = {line.split()[0]: line.split() for line in cli(config, "show", env=aws_env).stdout.splitlines()[1:]}
    assert "7" in rows["shard-0001"]

    # A reset to latest is honoured by the next run: only records appended after it are handled.
    assert cli(config, "reset", "--to", "latest", env=aws_env).returncode == 0
    (tmp_path / "handled.txt").unlink()
    run_until_caught_up(config)  # takes the leases and positions every shard at its tip
    append(config, [(f"k{i}", orjson.dumps({"v": i})) for i in range(100, 105)])
    run_until_caught_up(config)
    assert handled(tmp_path) == list(range(100, 105))


def test_dry_run_and_negative_sequences_on_a_lease_table(tmp_path: Path, moto_endpoint: str,
                                                        aws_env: dict[str, str]) -> None:
    table = f"leases-{uuid.uuid4().hex[:8]}"
    config = write_pipeline(tmp_path, ECHO, shards=2, sinks="",
                            extra=f'[checkpoints]\ntype = "dynamodb"\ntable = "{table}"\n'
                                  f'endpoint_url = "{moto_endpoint}"\nfailover_time = 2.0\n')
    append(config, [(f"k{i}", orjson.dumps({"v": i})) for i in range(10)])
    run_until_caught_up(config)
    before = cli(config, "show", env=aws_env).stdout
    dry = cli(config, "reset", "--to", "latest", "--dry-run", env=aws_env)
    assert dry.returncode == 0, dry.stderr
    assert "would reset 2 shard(s)" in dry.stdout and "-> latest" in dry.stdout
    negative = cli(config, "set", "--shard", "shard-0000", "--sequence", "-5", env=aws_env)
    assert negative.returncode == 2 and "negative" in negative.stderr
    unwritten = cli(config, "set", "--shard", "shard-0000", "--sequence", "500", env=aws_env)
    assert unwritten.returncode == 1 and "no sequence 500" in unwritten.stderr
    assert cli(config, "show", env=aws_env).stdout == before, "neither wrote anything"


SLOW = """
import time

def handle(batch, context):
    time.sleep(0.1)
    return [r.json()["v"] for r in batch]
"""


def test_until_caught_up_waits_for_a_dead_workers_leases(
    tmp_path: Path, moto_endpoint: str, aws_env: dict[str, str]
) -> None:
    """A restarted worker must not call itself caught up while a killed worker's leases are unexpired."""
    import signal
    import time

    from tests.pipelines import daemon, kill, output_objects

    table = f"leases-{uuid.uuid4().hex[:8]}"
    config = write_pipeline(tmp_path, SLOW, shards=4, batching="max_records = 20",
                            sinks='[[sinks]]\ntype = "local"\npath = "out"\nfsync = false\n',
                            extra=f'[checkpoints]\ntype = "dynamodb"\ntable = "{table}"\n'
                                  f'endpoint_url = "{moto_endpoint}"\nfailover_time = 2.0\n'
                                  'worker_id = "${WORKER:-setup}"\n')
    append(config, [(f"k{i}", orjson.dumps({"v": i})) for i in range(8000)])
    first = daemon(config, env={**aws_env, "WORKER": "first"})
    time.sleep(2.5)  # long enough to take every lease and handle some batches
    kill(first, signal.SIGKILL)
    first.wait(10)
    done = [v for items in output_objects(tmp_path / "out").values() for v in items]
    assert 0 < len(done) < 8000, "the kill landed mid-run"
    second = daemon(config, "--until-caught-up", env={**aws_env, "WORKER": "second"})
    _, err = second.communicate(timeout=90)
    assert second.returncode == 0, err.decode()[-2000:]
    values = [v for items in output_objects(tmp_path / "out").values() for v in items]
    assert sorted(values) == list(range(8000))


async def test_set_refuses_a_sequence_the_kinesis_shard_does_not_hold(
    tmp_path: Path, kinesis_endpoint: str, moto_endpoint: str, aws_env: dict[str, str]
) -> None:
    from tests.integration.aws_support import client, create_stream, put, run_caught_up, shard_hash_starts
    from tests.integration.test_kinesis_e2e import Setup

    stream = f"cp-{uuid.uuid4().hex[:8]}"
    async with client("kinesis", kinesis_endpoint) as kinesis:
        await create_stream(kinesis, stream, 1)
        start = next(iter((await shard_hash_starts(kinesis, stream)).values()))
        placed = await put(kinesis, stream, [(f"k{i}", b"r%d" % i, start) for i in range(5)])
    setup = Setup(tmp_path, stream, kinesis_endpoint, moto_endpoint)
    await asyncio.to_thread(run_caught_up, setup.config, env=setup.env())
    shard, _ = placed[0]
    env = {**aws_env, **setup.env()}

    bogus = await asyncio.to_thread(cli, setup.config, "set", "--shard", shard, "--sequence", "12345", env=env)
    assert bogus.returncode == 1 and "does not hold sequence 12345" in bogus.stderr, bogus.stderr
    real = await asyncio.to_thread(cli, setup.config, "set", "--shard", shard, "--sequence", str(placed[2][1]),
                                   env=env)
    assert real.returncode == 0, real.stderr
    shown = await asyncio.to_thread(cli, setup.config, "show", env=env)
    assert str(placed[2][1]) in shown.stdout
