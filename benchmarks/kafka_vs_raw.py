"""The Kafka pipeline against a raw aiokafka loop over the same preloaded topic, same broker, same process.

Raw loop: one consumer (auto-commit off) doing ``getmany(max_records=B)``, ``orjson.loads`` of every
value, then a commit of each partition's last offset + 1. Pipeline: streamfn with the Kafka source,
batches of B, the ``json`` benchmark handler (``orjson.loads`` of every record) and no sinks, with
checkpoints as committed offsets. Each run uses its own consumer group and is timed from its
first record fetched to its last record handled and committed (the group join is left out: it
is the broker's, and Tansu holds joins for seconds). CPU seconds are this process's over the same span.
Runs alternate (raw, pipeline, raw, pipeline, ...) so load on the machine weighs on both alike.

``python -m benchmarks.kafka_vs_raw [--records 1000000] [--batch 1000] [--partitions 4] [--json]``
Uses the broker in STREAMFN_TEST_KAFKA, else starts Tansu (exit 77 when neither is available).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
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
from streamfn.connectors.kafka.source import KafkaSourceConfig, PartitionFeed
from streamfn.engine.daemon import install_event_loop_policy
from streamfn.engine.pipeline import Pipeline

SKIPPED = 77


class Progress:
    """Records the pipeline's handler saw, and when the first record was fetched."""

    handled = 0
    target = 0
    first: float | None = None
    first_cpu: float | None = None
    done: asyncio.Event | None = None


async def json_handler(batch: Batch, context: Context) -> None:
    """The raw loop's work: decode every value."""
    loads = orjson.loads
    for record in batch.records:
        loads(record.data)
    Progress.handled += len(batch.records)
    if Progress.handled >= Progress.target and Progress.done is not None:
        Progress.done.set()


def broker() -> AbstractContextManager[str | None]:
    return bench_server("STREAMFN_TEST_KAFKA", "start_tansu", "Kafka broker")


async def preload(bootstrap: str, records: int, partitions: int) -> str:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"bench-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    try:
        chunk: list[Any] = []
        for n in range(records):
            value = orjson.dumps({"user": f"u{n % 1000}", "page": f"/p/{n % 97}", "n": n, "ts": 1_700_000_000 + n})
            chunk.append(await producer.send(topic, value, key=b"u%d" % (n % 1000), partition=n % partitions))
            if len(chunk) >= 20_000:
                await asyncio.gather(*chunk)
                chunk.clear()
        await asyncio.gather(*chunk)
    finally:
        await producer.stop()
    return topic


async def raw_loop(bootstrap: str, topic: str, records: int, batch: int) -> dict[str, float]:
    """getmany(max_records=batch) + orjson.loads + a commit per partition, until every record is done."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"raw-{uuid.uuid4().hex[:8]}",
                                enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=100,
                                session_timeout_ms=10_000, heartbeat_interval_ms=2_000)
    await consumer.start()
    loads = orjson.loads
    done, started, cpu0 = 0, 0.0, 0.0
    try:
        while done < records:
            fetched = await consumer.getmany(timeout_ms=500, max_records=batch)
            if fetched and not started:
                started, cpu0 = time.perf_counter(), time.process_time()
            for tp, messages in fetched.items():
                for message in messages:
                    loads(message.value)
                await consumer.commit({tp: messages[-1].offset + 1})
                done += len(messages)
        return {"seconds": time.perf_counter() - started, "cpu": time.process_time() - cpu0}
    finally:
        await consumer.stop()


async def pipeline_run(bootstrap: str, topic: str, records: int, batch: int, folder: Path) -> dict[str, float]:
    # The handler runs in the imported module, which is not __main__ when this file is run with -m.
    progress: Any = importlib.import_module("benchmarks.kafka_vs_raw").Progress
    progress.handled, progress.target, progress.first, progress.first_cpu = 0, records, None, None
    progress.done = asyncio.Event()
    config = PipelineConfig(
        name="bench-kafka", handler="benchmarks.kafka_vs_raw:json_handler",
        source=KafkaSourceConfig(bootstrap_servers=bootstrap, topic=topic, group_id=f"pipe-{uuid.uuid4().hex[:8]}",
                                 session_timeout_ms=10_000, heartbeat_interval_ms=2_000),
        state_dir=str(folder / "state"), batching=BatchingConfig(max_records=batch),
    )
    pipeline = Pipeline(LoadedPipeline(config=config, path=folder / "bench.toml"))
    put = PartitionFeed.put

    def timed_put(feed: PartitionFeed, messages: list[Any]) -> None:
        """The clock starts with the first record fetched, as the raw loop's does."""
        if progress.first is None:
            progress.first, progress.first_cpu = time.perf_counter(), time.process_time()
        put(feed, messages)

    PartitionFeed.put = timed_put  # type: ignore[method-assign,assignment]
    await pipeline.open()
    stop = asyncio.Event()
    run = asyncio.create_task(pipeline.run(stop))
    try:
        await progress.done.wait()
        await pipeline.store.flush()  # the last checkpoints committed, as the raw loop's are
        return {"seconds": time.perf_counter() - progress.first, "cpu": time.process_time() - progress.first_cpu}
    finally:
        PartitionFeed.put = put  # type: ignore[method-assign]
        stop.set()
        await run
        await pipeline.shutdown()


async def measure(args: argparse.Namespace, bootstrap: str) -> list[dict[str, Any]]:
    topic = await preload(bootstrap, args.records, args.partitions)
    raw: list[dict[str, float]] = []
    pipe: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            raw.append(await raw_loop(bootstrap, topic, args.records, args.batch))
            pipe.append(await pipeline_run(bootstrap, topic, args.records, args.batch, Path(folder)))
    raw_s = statistics.median(r["seconds"] for r in raw)
    pipe_s = statistics.median(r["seconds"] for r in pipe)
    raw_cpu = statistics.median(r["cpu"] for r in raw)
    pipe_cpu = statistics.median(r["cpu"] for r in pipe)
    return [{
        "benchmark": "kafka_vs_raw", "records": args.records, "partitions": args.partitions, "batch": args.batch,
        "repeats": args.repeats,
        "raw_records_per_s": round(args.records / raw_s), "pipeline_records_per_s": round(args.records / pipe_s),
        "throughput_ratio": round(raw_s / pipe_s, 3),
        "raw_cpu_s": round(raw_cpu, 2), "pipeline_cpu_s": round(pipe_cpu, 2),
        "cpu_ratio": round(pipe_cpu / raw_cpu, 3) if raw_cpu else None,
    }]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kafka_vs_raw", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1_000, help="getmany max_records and pipeline batch size")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs of each; medians are reported")
    parser.add_argument("--json", action="store_true", help="print one JSON line (the harness's contract)")
    args = parser.parse_args(argv)
    install_event_loop_policy()
    with broker() as bootstrap:
        if bootstrap is None:
            return SKIPPED
        rows = asyncio.run(measure(args, bootstrap))
    if args.json:
        print(orjson.dumps(rows).decode())
        return 0
    row = rows[0]
    print(f"{row['records']:,} records, {row['partitions']} partitions, batch {row['batch']}")
    print(f"  raw aiokafka loop : {row['raw_records_per_s']:>10,} records/s  {row['raw_cpu_s']:>6.2f} CPU s")
    print(f"  streamfn pipeline : {row['pipeline_records_per_s']:>10,} records/s  {row['pipeline_cpu_s']:>6.2f} CPU s")
    print(f"  pipeline / raw    : {row['throughput_ratio']:.2f}x throughput, {row['cpu_ratio']:.2f}x CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
