"""``parallelization_factor = 4`` through SIGKILLs of a real ``streamfn run`` while a recorded batch
straddles the checkpoint (a lane finished past a lagging one), on kinesis-mock and on moto's
DynamoDB Streams: the restart resumes at a record the source handed out, every record is handled,
and the output is exact (each record's output once, batches formed again under the same keys)."""

from __future__ import annotations

import asyncio
import sqlite3
import textwrap
import time
from pathlib import Path

from streamfn.connectors.local.store import decode_checkpoint
from streamfn.protocols.checkpoint import Checkpoint
from tests.integration import test_dynamodb_streams as streams
from tests.integration.aws_support import (
    client,
    create_stream,
    kill,
    put,
    run_caught_up,
    shard_hash_starts,
    start_pipeline,
    unique,
)
from tests.pipelines import output_objects

#: Lane 0 is slow, so the other lanes finish batches past the watermark it holds back.
HANDLER = """
import json
import os
import time
import zlib

def ident(record):
    if record.attributes and "dynamodb" in record.attributes:
        return record.json()["Keys"]["id"]["S"]
    return record.data.decode()

def handle(batch, context):
    slow = zlib.crc32(batch[0].partition_key.encode()) % 4 == 0
    time.sleep(0.12 if slow else 0.01)
    with open(os.environ["HANDLED_LOG"], "a") as log:
        log.write("".join(ident(r) + "\\n" for r in batch))
    return [{"id": ident(r)} for r in batch]
"""

KILLS = 2


def write_config(folder: Path, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lanes_handler.py").write_text(textwrap.dedent(HANDLER))
    config = folder / "pipeline.toml"
    config.write_text(
        'name = "lanes"\nhandler = "lanes_handler:handle"\nstate_dir = "state"\nparallelization_factor = 4\n'
        f"{source}idle_interval = 0.02\nmax_reads_per_second = 50.0\nbackoff_initial = 0.01\nbackoff_max = 0.05\n"
        "[batching]\nmax_records = 5\n[retry]\ninitial_delay = 0.01\nmax_delay = 0.05\n"
        '[[sinks]]\ntype = "local"\npath = "out"\nfsync = false\n'
    )
    return config


def straddling(config: Path) -> list[tuple[str, Checkpoint]]:
    """Shards whose durable checkpoint has a recorded batch starting at or below it."""
    path = config.parent / "state" / "checkpoints.sqlite3"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute("SELECT shard_id, state FROM checkpoints").fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        db.close()
    out = []
    for shard_id, state in rows:
        checkpoint = decode_checkpoint(state)
        position = checkpoint.position
        if position is not None and any(first <= position < last for first, last in checkpoint.pending):
            out.append((shard_id, checkpoint))
    return out


async def crash_while_straddling(config: Path, log: Path, expected: set[str]) -> int:
    """SIGKILL the daemon each time a recorded batch straddles its checkpoint; then run it to the
    end with ``--until-caught-up``. How many kills hit a straddling state."""
    hits = 0
    for _ in range(KILLS):
        handled_before = len(handled(log))
        proc = start_pipeline(config, env={"HANDLED_LOG": str(log)})
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                now = handled(log)
                if set(now) >= expected or (len(now) > handled_before and straddling(config)):
                    break
                await asyncio.sleep(0.01)
            hits += bool(straddling(config))
        finally:
            kill(proc)  # SIGKILL: batches in flight, pending bounds recorded
    await asyncio.to_thread(run_caught_up, config, env={"HANDLED_LOG": str(log)}, timeout=120)
    return hits


def handled(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def assert_exact(config: Path, log: Path, expected: set[str]) -> None:
    assert set(handled(log)) == expected, "a record was never handled"
    objects = output_objects(config.parent / "out")
    ids = sorted(item["id"] for items in objects.values() for item in items)
    assert sorted(set(ids)) == sorted(expected)
    assert len(ids) == len(expected), f"{len(ids) - len(expected)} records' output written twice"


async def test_kinesis_lanes_survive_sigkill_with_a_batch_straddling_the_checkpoint(
    tmp_path: Path, kinesis_endpoint: str, aws_env: dict[str, str]
) -> None:
    stream = unique("lanes")
    n = 300
    async with client("kinesis", kinesis_endpoint) as kinesis:
        await create_stream(kinesis, stream, 2)
        starts = list((await shard_hash_starts(kinesis, stream)).values())
        await put(kinesis, stream, [(f"k{i % 60}", b"r%d" % i, starts[i % 2]) for i in range(n)])
    config = write_config(tmp_path, f'[source]\ntype = "kinesis"\nstream = "{stream}"\n'
                                    f'endpoint_url = "{kinesis_endpoint}"\n')
    expected = {f"r{i}" for i in range(n)}
    log = tmp_path / "handled.log"
    hits = await crash_while_straddling(config, log, expected)
    assert hits >= 1, "no kill hit a batch straddling the checkpoint: the test proved nothing"
    assert_exact(config, log, expected)


async def test_dynamodb_streams_lanes_survive_sigkill_with_a_batch_straddling_the_checkpoint(
    tmp_path: Path, moto_endpoint: str, aws_env: dict[str, str]
) -> None:
    table = unique("lanes")
    n = 200
    async with client("dynamodb", moto_endpoint) as ddb:
        await streams.create_table(ddb, table)
        for i in range(n):
            await ddb.put_item(TableName=table, Item={"id": {"S": f"i{i}"}})
    config = write_config(tmp_path, f'[source]\ntype = "dynamodb_streams"\ntable = "{table}"\n'
                                    f'endpoint_url = "{moto_endpoint}"\n')
    expected = {f"i{i}" for i in range(n)}
    log = tmp_path / "handled.log"
    hits = await crash_while_straddling(config, log, expected)
    assert hits >= 1, "no kill hit a batch straddling the checkpoint: the test proved nothing"
    assert_exact(config, log, expected)
