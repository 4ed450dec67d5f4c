"""The Kinesis pipeline against a raw aiobotocore GetRecords loop over the same preloaded stream.

Raw loop: one task per shard, ``GetShardIterator`` TRIM_HORIZON then ``GetRecords(Limit=10000)``
until the shard's records are read, ``orjson.loads`` of each ``Data`` (botocore parses the answers:
base64 and a datetime per record). Pipeline: streamfn with the Kinesis source, batches of B, a
handler that does ``orjson.loads`` of every record, no sinks, local checkpoints. Both run in this
process against the same server (kinesalite: the fastest Kinesis-compatible one here), each timed
from before its client is created to the last record handled (so the pipeline pays for its start:
shard listing, checkpoint loading); CPU is this process's ``time.process_time`` over the same span, per record.
Runs alternate (raw, pipeline, ...) and medians are reported.

``python -m benchmarks.kinesis_vs_raw [--records 200000] [--shards 4] [--batch 1000] [--json]``
Uses the server in STREAMFN_TEST_KINESALITE, else starts kinesalite (exit 77 when neither is there).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import orjson

from benchmarks.servers import bench_server
from streamfn import Batch, Context
from streamfn.config import BatchingConfig, LoadedPipeline, PipelineConfig
from streamfn.connectors.kinesis.source import KinesisSourceConfig
from streamfn.engine.daemon import install_event_loop_policy
from streamfn.engine.memory import freeze_startup, tune_process
from streamfn.engine.pipeline import Pipeline

SKIPPED = 77
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class Progress:
    """Records the pipeline's handler has seen."""

    handled = 0


async def json_handler(batch: Batch, context: Context) -> None:
    """The raw loop's work: decode every record."""
    loads = orjson.loads
    for record in batch.records:
        loads(record.data)
    Progress.handled += len(batch.records)


def server() -> AbstractContextManager[str | None]:
    return bench_server("STREAMFN_TEST_KINESALITE", "start_kinesalite", "kinesalite")


def kinesis_client(endpoint: str) -> Any:
    from aiobotocore.session import get_session

    return get_session().create_client("kinesis", endpoint_url=endpoint, region_name="us-east-1")


async def preload(endpoint: str, records: int, shards: int) -> tuple[str, dict[str, int]]:
    """A fresh stream with ``records`` ~120-byte JSON records spread evenly over ``shards``."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    per_shard: dict[str, int] = {}
    async with kinesis_client(endpoint) as kinesis:
        await kinesis.create_stream(StreamName=name, ShardCount=shards)
        for _ in range(400):
            summary = await kinesis.describe_stream_summary(StreamName=name)
            if summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
                break
            await asyncio.sleep(0.05)
        listed = (await kinesis.list_shards(StreamName=name))["Shards"]
        starts = [s["HashKeyRange"]["StartingHashKey"] for s in listed]

        async def put(chunk: range) -> None:
            entries = [{"PartitionKey": f"u{n % 1000}", "ExplicitHashKey": starts[n % shards],
                        "Data": orjson.dumps({"user": f"u{n % 1000}", "page": f"/p/{n % 97}", "n": n,
                                              "ts": 1_700_000_000 + n, "ua": "bench"})} for n in chunk]
            answer = await kinesis.put_records(StreamName=name, Records=entries)
            if answer.get("FailedRecordCount"):
                raise RuntimeError("put failed")
            for entry in answer["Records"]:
                per_shard[entry["ShardId"]] = per_shard.get(entry["ShardId"], 0) + 1

        chunks = [range(i, min(i + 500, records)) for i in range(0, records, 500)]
        for i in range(0, len(chunks), 8):
            await asyncio.gather(*(put(c) for c in chunks[i:i + 8]))
    return name, per_shard


async def raw_loop(endpoint: str, stream: str, per_shard: dict[str, int]) -> dict[str, float]:
    """One task per shard: GetRecords(Limit=10000) and orjson.loads of each Data."""
    loads = orjson.loads
    started, cpu0 = time.perf_counter(), time.process_time()

    async def shard(kinesis: Any, shard_id: str, expected: int) -> None:
        iterator = (await kinesis.get_shard_iterator(StreamName=stream, ShardId=shard_id,
                                                     ShardIteratorType="TRIM_HORIZON"))["ShardIterator"]
        done = 0
        while done < expected:
            answer = await kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            for record in answer["Records"]:
                loads(record["Data"])
            done += len(answer["Records"])
            iterator = answer["NextShardIterator"]

    async with kinesis_client(endpoint) as kinesis:
        await asyncio.gather(*(shard(kinesis, s, n) for s, n in per_shard.items()))
    return {"seconds": time.perf_counter() - started, "cpu": time.process_time() - cpu0}


async def pipeline_run(endpoint: str, stream: str, records: int, batch: int, folder: Path) -> dict[str, float]:
    # The handler runs in the imported module, which is not __main__ when this file is run with -m.
    progress: Any = importlib.import_module("benchmarks.kinesis_vs_raw").Progress
    progress.handled = 0
    started, cpu0 = time.perf_counter(), time.process_time()
    state = folder / f"state-{uuid.uuid4().hex[:6]}"
    config = PipelineConfig(
        name="bench-kinesis", handler="benchmarks.kinesis_vs_raw:json_handler",
        source=KinesisSourceConfig(stream=stream, endpoint_url=endpoint),
        state_dir=str(state), batching=BatchingConfig(max_records=batch),
    )
    tune_process()  # as `streamfn run` does
    pipeline = Pipeline(LoadedPipeline(config=config, path=folder / "bench.toml"))
    await pipeline.open()
    freeze_startup()  # as `streamfn run` does, once its pipelines are open
    stop = asyncio.Event()
    run = asyncio.create_task(pipeline.run(stop))
    try:
        while progress.handled < records:
            if run.done():
                run.result()
                raise RuntimeError("pipeline stopped early")
            await asyncio.sleep(0.002)
        return {"seconds": time.perf_counter() - started, "cpu": time.process_time() - cpu0}
    finally:
        stop.set()
        await run
        await pipeline.shutdown()


async def measure(args: argparse.Namespace, endpoint: str) -> list[dict[str, Any]]:
    stream, per_shard = await preload(endpoint, args.records, args.shards)
    raw: list[dict[str, float]] = []
    pipe: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            raw.append(await raw_loop(endpoint, stream, per_shard))
            pipe.append(await pipeline_run(endpoint, stream, args.records, args.batch, Path(folder)))
    raw_s = statistics.median(r["seconds"] for r in raw)
    pipe_s = statistics.median(r["seconds"] for r in pipe)
    raw_cpu = statistics.median(r["cpu"] for r in raw)
    pipe_cpu = statistics.median(r["cpu"] for r in pipe)
    return [{
        "benchmark": "kinesis_vs_raw", "server": "kinesalite", "records": args.records, "shards": args.shards,
        "batch": args.batch, "repeats": args.repeats,
        "raw_records_per_s": round(args.records / raw_s), "pipeline_records_per_s": round(args.records / pipe_s),
        "throughput_ratio": round(raw_s / pipe_s, 3),
        "raw_cpu_us_per_record": round(raw_cpu / args.records * 1e6, 2),
        "pipeline_cpu_us_per_record": round(pipe_cpu / args.records * 1e6, 2),
        "cpu_ratio": round(pipe_cpu / raw_cpu, 3) if raw_cpu else None,
    }]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kinesis_vs_raw", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1_000, help="pipeline batch size (max_records)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each; medians are reported")
    parser.add_argument("--json", action="store_true", help="print one JSON line (the harness's contract)")
    args = parser.parse_args(argv)
    for key, value in CREDENTIALS.items():
        os.environ.setdefault(key, value)
    install_event_loop_policy()
    with server() as endpoint:
        if endpoint is None:
            return SKIPPED
        rows = asyncio.run(measure(args, endpoint))
    if args.json:
        print(orjson.dumps(rows).decode())
        return 0
    row = rows[0]
    print(f"{row['records']:,} records, {row['shards']} shards, batch {row['batch']}, kinesalite")
    print(f"  raw aiobotocore loop : {row['raw_records_per_s']:>8,} records/s  "
          f"{row['raw_cpu_us_per_record']:>6.2f} CPU us/record")
    print(f"  streamfn pipeline    : {row['pipeline_records_per_s']:>8,} records/s  "
          f"{row['pipeline_cpu_us_per_record']:>6.2f} CPU us/record")
    print(f"  pipeline / raw       : {row['throughput_ratio']:.2f}x throughput, {row['cpu_ratio']:.2f}x CPU per record")
    return 0


if __name__ == "__main__":
    sys.exit(main())
