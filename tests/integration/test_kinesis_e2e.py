"""Kinesis pipelines end to end: records put through the real API (kinesis-mock), run by the engine,
read back from S3 / DynamoDB (moto) and from a log the handler keeps of every record it saw.

Checkpoints live in the DynamoDB lease table on moto (the production setup for Kinesis), except
where the local store is the point.
"""

from __future__ import annotations

import asyncio
import gzip
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.aws_support import (
    client,
    create_stream,
    kill,
    load_aws_pipeline,
    put,
    run_caught_up,
    shard_hash_starts,
    start_pipeline,
    unique,
    wait_active,
)
from tests.throttle_proxy import ThrottleProxy

HANDLER = """
import os
import time

def handle(batch, context):
    first = os.environ.get("FIRST_BATCH_SLEEP")
    marker = os.path.join(os.path.dirname(os.environ["HANDLED_LOG"]), "slept")
    if first and not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(float(first))
    time.sleep(float(os.environ.get("BATCH_SLEEP", "0")))
    with open(os.environ["HANDLED_LOG"], "a") as log:  # one append per call: whole lines
        log.write("".join(f"{r.shard_id} {r.sequence} {r.sub_sequence} {r.data.decode()} {time.time()}\\n"
                          for r in batch))
    return [{"id": r.data.decode(), "shard": r.shard_id, "seq": str(r.sequence)} for r in batch]
"""


class Setup:
    """A pipeline folder: handler, config, and where its outputs go."""

    def __init__(self, folder: Path, stream: str, kinesis: str, moto: str, *, max_records: int = 10,
                 source_extra: str = "", sinks: tuple[str, ...] = ("s3",), checkpoints: str = "dynamodb") -> None:
        self.folder = folder
        self.stream = stream
        self.moto = moto
        self.bucket = unique("out")
        self.table = unique("items")
        self.log = folder / "handled.log"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "e2e_handler.py").write_text(textwrap.dedent(HANDLER))
        blocks = []
        if "s3" in sinks:
            blocks.append(f'[[sinks]]\ntype = "s3"\nbucket = "{self.bucket}"\nendpoint_url = "{moto}"\n'
                          "create_bucket = true\ngzip = true\n")
        if "dynamodb" in sinks:
            blocks.append(f'[[sinks]]\ntype = "dynamodb"\ntable = "{self.table}"\nendpoint_url = "{moto}"\n')
        store = (f'[checkpoints]\ntype = "dynamodb"\ntable = "{unique("leases")}"\nendpoint_url = "{moto}"\n'
                 "failover_time = 3.0\ntake_interval = 0.5\nshard_sync_interval = 1.0\n"
                 if checkpoints == "dynamodb" else "")
        self.config = folder / "pipeline.toml"
        self.config.write_text(
            f'name = "clicks"\nhandler = "e2e_handler:handle"\nstate_dir = "state"\n'
            f'[source]\ntype = "kinesis"\nstream = "{stream}"\nendpoint_url = "{kinesis}"\n'
            f"idle_interval = 0.05\nmax_reads_per_second = 20.0\nbackoff_initial = 0.01\nbackoff_max = 0.1\n"
            f"{source_extra}\n{store}"
            f"[batching]\nmax_records = {max_records}\n[retry]\ninitial_delay = 0.01\nmax_delay = 0.05\n"
            + "".join(blocks)
        )

    def env(self, **extra: str) -> dict[str, str]:
        return {"HANDLED_LOG": str(self.log), **extra}

    def handled(self) -> list[tuple[str, int, int, str, float]]:
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            shard, seq, sub, ident, at = line.split(" ")
            out.append((shard, int(seq), int(sub), ident, float(at)))
        return out

    async def s3_items(self) -> tuple[list[str], list[dict[str, Any]]]:
        keys: list[str] = []
        items: list[dict[str, Any]] = []
        async with client("s3", self.moto) as s3:
            listing = await s3.list_objects_v2(Bucket=self.bucket)
            for entry in sorted(listing.get("Contents", ()), key=lambda e: e["Key"]):
                obj = await s3.get_object(Bucket=self.bucket, Key=entry["Key"])
                async with obj["Body"] as body:
                    data = gzip.decompress(await body.read())
                keys.append(entry["Key"])
                items.extend(orjson.loads(line) for line in data.splitlines())
        return keys, items

    async def create_table(self) -> None:
        async with client("dynamodb", self.moto) as ddb:
            await ddb.create_table(TableName=self.table, BillingMode="PAY_PER_REQUEST",
                                   AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                                   KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])

    async def table_ids(self) -> list[str]:
        async with client("dynamodb", self.moto) as ddb:
            items = (await ddb.scan(TableName=self.table, ConsistentRead=True))["Items"]
        return [item["id"]["S"] for item in items]


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("checkpoints", ["dynamodb", "local"])
async def test_four_shards_in_order_per_shard(
    tmp_path: Path, kinesis_endpoint: str, moto_endpoint: str, aws_env: dict[str, str], checkpoints: str
) -> None:
    stream = unique("four")
    async with client("kinesis", kinesis_endpoint) as kinesis:
        await create_stream(kinesis, stream, 4)
        starts = list((await shard_hash_starts(kinesis, stream)).values())
        placed = await put(kinesis, stream, [(f"k{i}", b"r%d" % i, starts[i % 4]) for i in range(200)])
    setup = Setup(tmp_path, stream, kinesis_endpoint, moto_endpoint, checkpoints=checkpoints)
    await asyncio.to_thread(run_caught_up, setup.config, env=setup.env())
    handled = setup.handled()
    expected: dict[str, list[tuple[int, str]]] = {}
    for i, (shard, seq) in enumerate(placed):
        expected.setdefault(shard, []).append((seq, f"r{i}"))
    seen: dict[str, list[tuple[int, str]]] = {}
    for shard, seq, _, ident, _ in handled:
        seen.setdefault(shard, []).append((seq, ident))
    assert seen == expected
    keys, items = await setup.s3_items()
    assert sorted(item["id"] for item in items) == sorted(f"r{i}" for i in range(200))
    assert all(key.startswith("clicks/shardId-") and key.endswith(".ndjson.gz") for key in keys)
    # A second run resumes from the checkpoints: nothing is handled again.
    await asyncio.to_thread(run_caught_up, setup.config, env=setup.env())
    assert len(setup.handled()) == 200


async def test_split_and_merge_while_running(
    tmp_path: Path, kinesis_endpoint: str, moto_endpoint: str, aws_env: dict[str, str]
) -> None:
    stream = unique("reshard")
    setup = Setup(tmp_path, stream, kinesis_endpoint, moto_endpoint, max_records=5)
    async with client("kinesis", kinesis_endpoint) as kinesis:
        await create_stream(kinesis, stream, 2)
        shards = await shard_hash_starts(kinesis, stream)
        first, second = sorted(shards)
        proc = start_pipeline(setup.config, env=setup.env(BATCH_SLEEP="0.02"))
        try:
            total = 0

            async def put_everywhere(tag: str, n: int) -> None:
                nonlocal total
                open_shards = list((await shard_hash_starts(kinesis, stream)).values())
                await put(kinesis, stream, [(f"k{i}", b"%s-%d" % (tag.encode(), i), open_shards[i % len(open_shards)])
                                            for i in range(n)])
                total += n

            await put_everywhere("before", 40)
            await wait_for(lambda: len(setup.handled()) >= 10, 60, "the pipeline never started")
            # Split the first shard while the pipeline is reading it.
            await kinesis.split_shard(StreamName=stream, ShardToSplit=first,
                                      NewStartingHashKey=str(shards[second] // 2))
            await wait_active(kinesis, stream)
            await put_everywhere("split", 60)
            children = sorted(set(await shard_hash_starts(kinesis, stream)) - {second})
            assert len(children) == 2
            await kinesis.merge_shards(StreamName=stream, ShardToMerge=children[0], AdjacentShardToMerge=children[1])
            await wait_active(kinesis, stream)
            await put_everywhere("merged", 40)
            await wait_for(lambda: len(setup.handled()) >= total, 90, "not every record was handled")
            await asyncio.sleep(1.0)  # nothing more may come
        finally:
            kill(proc, 15)
    assert proc.returncode == 0
    handled = setup.handled()
    counts = Counter(ident for _, _, _, ident, _ in handled)
    assert sorted(counts) == sorted(
        [f"before-{i}" for i in range(40)] + [f"split-{i}" for i in range(60)] + [f"merged-{i}" for i in range(40)])
    assert set(counts.values()) == {1}, "a record was handled twice"
    by_shard: dict[str, list[tuple[int, float]]] = {}
    for shard, seq, _, _, at in handled:
        by_shard.setdefault(shard, []).append((seq, at))
    for records in by_shard.values():
        assert [seq for seq, _ in records] == sorted(seq for seq, _ in records)
    merged = sorted(set(by_shard) - {first, second, *children})
    assert len(merged) == 1
    last_of = {shard: max(at for _, at in records) for shard, records in by_shard.items()}
    first_of = {shard: min(at for _, at in records) for shard, records in by_shard.items()}
    assert last_of[first] < min(first_of[c] for c in children), "a child started before its parent was drained"
    assert max(last_of[c] for c in children) < first_of[merged[0]], "the merged shard started before its parents"


async def test_iterator_expiry_mid_run_loses_and_repeats_nothing(
    tmp_path: Path, kinesis_endpoint: str, moto_endpoint: str, aws_env: dict[str, str]
) -> None:
    stream = unique("expiry")
    async with client("kinesis", kinesis_endpoint) as kinesis:
        await create_stream(kinesis, stream, 1)
        await put(kinesis, stream, [("k", b"r%d" % i, None) for i in range(60)])
    # The handler holds the first batch longer than the iterator is assumed to live.
    setup = Setup(tmp_path, stream, kinesis_endpoint, moto_endpoint, max_records=10,
                  source_extra="iterator_lifetime = 0.5\nread_limit = 20")
    await asyncio.to_thread(run_caught_up, setup.config, env=setup.env(FIRST_BATCH_SLEEP="1.5"))
    assert [ident for _, _, _, ident, _ in setup.handled()] == [f"r{i}" for i in range(60)]
    _, items = await setup.s3_items()
    assert sorted(item["id"] for item in items) == sorted(f"r{i}" for i in range(60))


async def test_throttling_through_a_proxy_never_fails_the_pipeline(
    tmp_path: Path, kinesis_endpoint: str, moto_endpoint: str, aws_env: dict[str, str]
) -> None:
    from streamfn.engine.daemon import run_pipelines

    stream = unique("throttled")
    async with client("kinesis", kinesis_endpoint) as kinesis:
        await create_stream(kinesis, stream, 2)
        starts = list((await shard_hash_starts(kinesis, stream)).values())
        await put(kinesis, stream, [(f"k{i}", b"r%d" % i, starts[i % 2]) for i in range(100)])
    async with ThrottleProxy(kinesis_endpoint) as proxy:
        setup = Setup(tmp_path, stream, proxy.endpoint, moto_endpoint, max_records=10,
                      source_extra="read_limit = 10")
        proxy.inject("Kinesis_20131202.GetRecords", 6)
        proxy.inject("Kinesis_20131202.GetRecords", 2, status=500)
        proxy.inject("Kinesis_20131202.GetShardIterator", 2)
        import os

        os.environ["HANDLED_LOG"] = str(setup.log)
        try:
            async with asyncio.timeout(90):
                await run_pipelines([load_aws_pipeline(setup.config)], until_caught_up=True, handle_signals=False)
        finally:
            os.environ.pop("HANDLED_LOG", None)
        assert proxy.pending() == 0
        assert proxy.injected["Kinesis_20131202.GetRecords"] == 8
    idents = [ident for _, _, _, ident, _ in setup.handled()]
    assert sorted(idents) == sorted(f"r{i}" for i in range(100)) and len(set(idents)) == 100


async def test_s3_and_dynamodb_outputs_have_no_duplicates_after_kill_9(
    tmp_path: Path, kinesis_endpoint: str, moto_endpoint: str, aws_env: dict[str, str]
) -> None:
    stream = unique("crash")
    n = 300
    async with client("kinesis", kinesis_endpoint) as kinesis:
        await create_stream(kinesis, stream, 2)
        starts = list((await shard_hash_starts(kinesis, stream)).values())
        await put(kinesis, stream, [(f"k{i}", b"r%d" % i, starts[i % 2]) for i in range(n)])
    setup = Setup(tmp_path, stream, kinesis_endpoint, moto_endpoint, max_records=10, sinks=("s3", "dynamodb"))
    await setup.create_table()
    proc = start_pipeline(setup.config, env=setup.env(BATCH_SLEEP="0.05"))
    try:
        await wait_for(lambda: len(setup.handled()) >= 60, 60, "the pipeline never got going")
    finally:
        kill(proc)  # SIGKILL, mid-run
    assert len(setup.handled()) < n
    # The restarted worker takes the dead one's leases once they expire (failover_time), then resumes
    # from the checkpoints; batches that were in flight are formed again and overwrite their objects.
    proc = start_pipeline(setup.config, env=setup.env())
    try:
        deadline = time.monotonic() + 90
        while len(set(await setup.table_ids())) < n or len({i["id"] for i in (await setup.s3_items())[1]}) < n:
            assert time.monotonic() < deadline, "the restarted pipeline did not finish"
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # let anything still in flight land
    finally:
        kill(proc, 15)
    keys, items = await setup.s3_items()
    ids = [item["id"] for item in items]
    assert sorted(set(ids)) == sorted(f"r{i}" for i in range(n))
    assert len(ids) == n, f"{len(ids) - n} duplicated records across {len(keys)} objects"
    table_ids = await setup.table_ids()
    assert sorted(table_ids) == sorted(f"r{i}" for i in range(n))


async def test_the_cli_runs_a_kinesis_pipeline_file(
    tmp_path: Path, kinesis_endpoint: str, moto_endpoint: str, aws_env: dict[str, str]
) -> None:
    import os
    import subprocess
    import sys

    stream = unique("cli")
    async with client("kinesis", kinesis_endpoint) as kinesis:
        await create_stream(kinesis, stream, 2)
        starts = list((await shard_hash_starts(kinesis, stream)).values())
        await put(kinesis, stream, [(f"k{i}", b"r%d" % i, starts[i % 2]) for i in range(40)])
    setup = Setup(tmp_path, stream, "${KINESIS_URL}", moto_endpoint, sinks=())
    with setup.config.open("a") as config:
        config.write('[[sinks]]\ntype = "local"\npath = "out"\nfsync = false\n')
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "streamfn", "run", str(setup.config), "--until-caught-up"],
        cwd=tmp_path, capture_output=True, timeout=90,
        env={**os.environ, "KINESIS_URL": kinesis_endpoint, "HANDLED_LOG": str(setup.log)},
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    items = [orjson.loads(line) for path in sorted((tmp_path / "out").rglob("*.ndjson"))
             for line in path.read_bytes().splitlines()]
    assert sorted(item["id"] for item in items) == sorted(f"r{i}" for i in range(40))


async def test_kpl_aggregates_resume_between_sub_records_after_a_stop(
    tmp_path: Path, kinesis_endpoint: str, moto_endpoint: str, aws_env: dict[str, str]
) -> None:
    from streamfn.connectors.kinesis.kpl import UserRecord, aggregate

    stream = unique("kpl")
    async with client("kinesis", kinesis_endpoint) as kinesis:
        await create_stream(kinesis, stream, 1)
        await put(kinesis, stream, [(f"agg{a}", aggregate([UserRecord(f"u{a}-{i}", b"r%d-%d" % (a, i))
                                                             for i in range(7)]), None) for a in range(4)])
    setup = Setup(tmp_path, stream, kinesis_endpoint, moto_endpoint, max_records=3)
    proc = start_pipeline(setup.config, env=setup.env(BATCH_SLEEP="0.3"))
    try:
        await wait_for(lambda: len(setup.handled()) >= 4, 60, "the pipeline never got going")
    finally:
        kill(proc, 15)  # graceful: the batch in flight finishes and is checkpointed
    assert proc.returncode == 0
    first_run = setup.handled()
    assert 4 <= len(first_run) < 28 and len(first_run) % 7 != 0, "the stop should fall inside an aggregate"
    await asyncio.to_thread(run_caught_up, setup.config, env=setup.env())
    handled = setup.handled()
    assert [ident for _, _, _, ident, _ in handled] == [f"r{a}-{i}" for a in range(4) for i in range(7)]
    assert [sub for _, _, sub, _, _ in handled] == list(range(7)) * 4
    _, items = await setup.s3_items()
    assert sorted(item["id"] for item in items) == sorted(f"r{a}-{i}" for a in range(4) for i in range(7))
