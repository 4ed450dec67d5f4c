"""The Kafka pipeline against raw client loops over the same preloaded topic and broker, each in a fresh process.

The topic holds the local benchmarks' click events (~246 B of JSON each, keyed by user). Contenders:
- raw aiokafka: one consumer (auto-commit off) doing ``getmany(max_records=B)``, ``orjson.loads`` of
  every value, then a commit of each partition's last offset + 1;
- raw confluent-kafka (when installed, the ``bench`` extra): ``consume(B)``, ``orjson.loads`` of every
  value, a synchronous commit of the positions per batch; tuned fetch sizes;
- streamfn: the Kafka source, batches of B, a handler calling ``batch.json()``, no sinks, checkpoints
  as committed offsets.
Each run uses its own consumer group and is timed from its first record fetched to its last record
handled and committed (the group join is left out: it is the broker's, and Tansu holds joins for
seconds). CPU seconds and peak RSS (VmHWM) are that process's. Reps alternate the contenders;
medians are reported.

``python -m benchmarks.kafka_vs_raw [--records 1000000] [--batch 1000] [--partitions 4] [--repeats 3] [--json]
[--tree LABEL=PATH ...]``: ``--tree`` adds the pipeline of another checkout (``streamfn@LABEL``, run with that
checkout's code and harness) to the interleaved reps, so two versions are compared in one run.
Uses the broker in STREAMFN_TEST_KAFKA, else starts Tansu (exit 77 when neither is available).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import SEED, status_kib
from benchmarks.servers import bench_server
from streamfn import Batch, Context
from streamfn.config import BatchingConfig, LoadedPipeline, PipelineConfig
from streamfn.connectors.kafka.offsets import KafkaCheckpointStore, KafkaCheckpointStoreConfig
from streamfn.connectors.kafka.source import KafkaSourceConfig, PartitionFeed
from streamfn.connectors.local.produce import synthetic_clicks
from streamfn.engine.daemon import install_event_loop_policy
from streamfn.engine.memory import freeze_startup, tune_process
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
    """The raw loop's work: decode every value (the way README tells users to)."""
    batch.json()
    Progress.handled += len(batch)
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
        for n, (key, value) in enumerate(synthetic_clicks(records, SEED)):
            chunk.append(await producer.send(topic, value, key=key.encode(), partition=n % partitions))
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
    done, started, cpu0, commits = 0, 0.0, 0.0, 0
    try:
        while done < records:
            fetched = await consumer.getmany(timeout_ms=500, max_records=batch)
            if fetched and not started:
                started, cpu0 = time.perf_counter(), time.process_time()
            for tp, messages in fetched.items():
                for message in messages:
                    loads(message.value)
                await consumer.commit({tp: messages[-1].offset + 1})
                commits += 1
                done += len(messages)
        return {"seconds": time.perf_counter() - started, "cpu": time.process_time() - cpu0, "commits": commits}
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
        # Tansu drops offset commit metadata; the harness measures throughput, not crash recovery.
        checkpoints=KafkaCheckpointStoreConfig(without_commit_metadata="accept"),
    )
    tune_process()  # as `streamfn run` does
    pipeline = Pipeline(LoadedPipeline(config=config, path=folder / "bench.toml"))
    put = PartitionFeed.put

    def timed_put(feed: PartitionFeed, messages: list[Any]) -> None:
        """The clock starts with the first record fetched, as the raw loop's does."""
        if progress.first is None:
            progress.first, progress.first_cpu = time.perf_counter(), time.process_time()
        put(feed, messages)

    PartitionFeed.put = timed_put  # type: ignore[method-assign,assignment]
    await pipeline.open()
    freeze_startup()  # as `streamfn run` does, once its pipelines are open
    stop = asyncio.Event()
    run = asyncio.create_task(pipeline.run(stop))
    try:
        await progress.done.wait()
        await pipeline.store.flush()  # the last checkpoints committed, as the raw loop's are
        seconds, cpu = time.perf_counter() - progress.first, time.process_time() - progress.first_cpu
        store = pipeline.store
        commits = store.commits if isinstance(store, KafkaCheckpointStore) else -1
        return {"seconds": seconds, "cpu": cpu, "commits": commits}
    finally:
        PartitionFeed.put = put  # type: ignore[method-assign]
        stop.set()
        await run
        await pipeline.shutdown()


def confluent_loop(bootstrap: str, topic: str, records: int, batch: int) -> dict[str, float]:
    """consume(batch) + orjson.loads + a synchronous commit per batch, until every record is done."""
    from confluent_kafka import Consumer

    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"confluent-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest", "fetch.wait.max.ms": 100,
        "fetch.max.bytes": 64 << 20, "max.partition.fetch.bytes": 8 << 20, "queued.min.messages": 100_000,
        "session.timeout.ms": 10_000, "heartbeat.interval.ms": 2_000,
    })
    consumer.subscribe([topic])
    loads = orjson.loads
    done, started, cpu0 = 0, 0.0, 0.0
    try:
        while done < records:
            messages = consumer.consume(num_messages=batch, timeout=0.5)
            if messages and not started:
                started, cpu0 = time.perf_counter(), time.process_time()
            for message in messages:
                if message.error() is None:
                    value = message.value()
                    if value is not None:
                        loads(value)
                    done += 1
            if messages:
                consumer.commit(asynchronous=False)
        return {"seconds": time.perf_counter() - started, "cpu": time.process_time() - cpu0}
    finally:
        consumer.close()


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """One contender, in this (fresh) process."""
    if args.run == "raw-aiokafka":
        result = asyncio.run(raw_loop(args.bootstrap, args.topic, args.records, args.batch))
    elif args.run == "raw-confluent":
        result = confluent_loop(args.bootstrap, args.topic, args.records, args.batch)
    else:
        with tempfile.TemporaryDirectory() as folder:
            result = asyncio.run(pipeline_run(args.bootstrap, args.topic, args.records, args.batch, Path(folder)))
    return {**result, "peak_rss_mib": status_kib("VmHWM") / 1024}


CONTENDERS = ("raw-aiokafka", "streamfn", "raw-confluent")


def trees(specs: list[str]) -> dict[str, Path]:
    """``--tree LABEL=PATH`` options as contender names (``streamfn@LABEL``) and checkouts."""
    found: dict[str, Path] = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep or not label or not (Path(path) / "streamfn").is_dir():
            raise SystemExit(f"--tree {spec!r}: expected LABEL=PATH of a streamfn checkout")
        found[f"streamfn@{label}"] = Path(path).resolve()
    return found


def measure(args: argparse.Namespace, bootstrap: str) -> list[dict[str, Any]]:
    topic = asyncio.run(preload(bootstrap, args.records, args.partitions))
    here = Path(__file__).resolve().parent.parent
    checkouts = {name: here for name in CONTENDERS} | trees(args.tree)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in checkouts}
    skipped: set[str] = set()
    for _ in range(args.repeats):
        for name, checkout in checkouts.items():
            if name in skipped:
                continue
            command = [sys.executable, "-m", "benchmarks.kafka_vs_raw", "--run", name.partition("@")[0],
                       "--bootstrap", bootstrap, "--topic", topic, "--records", str(args.records),
                       "--batch", str(args.batch)]
            env = {**os.environ, "PYTHONPATH": str(checkout)}
            done = subprocess.run(command, capture_output=True, check=False, timeout=1800, cwd=checkout, env=env)
            if done.returncode == SKIPPED:
                skipped.add(name)
                continue
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr.decode()[-3000:]}")
            runs[name].append(orjson.loads(done.stdout.splitlines()[-1]))
    rows = []
    for name, found in runs.items():
        if not found:
            continue
        seconds = statistics.median(r["seconds"] for r in found)
        cpu = statistics.median(r["cpu"] for r in found)
        rows.append({"benchmark": "kafka_vs_raw", "contender": name, "records": args.records,
                     "partitions": args.partitions, "batch": args.batch, "reps": len(found),
                     "records_per_s": round(args.records / seconds), "cpu_us_per_record": cpu / args.records * 1e6,
                     "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in found),
                     "runs": found, "checkout": str(checkouts[name])})
    ours = next((row for row in rows if row["contender"] == "streamfn"), None)
    for row in rows:
        if ours is not None and row is not ours:
            ours[f"x_{row['contender']}"] = ours["records_per_s"] / row["records_per_s"]
            ours[f"x_{row['contender']}_cpu"] = row["cpu_us_per_record"] / ours["cpu_us_per_record"]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kafka_vs_raw", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1_000, help="getmany max_records and pipeline batch size")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each; medians are reported")
    parser.add_argument("--json", action="store_true", help="print one JSON line (the harness's contract)")
    parser.add_argument("--tree", action="append", default=[], metavar="LABEL=PATH",
                        help="also run the pipeline of the streamfn checkout at PATH, as streamfn@LABEL")
    parser.add_argument("--run", choices=CONTENDERS, help=argparse.SUPPRESS)  # one contender, in a child
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    install_event_loop_policy()
    if args.run:
        if args.run == "raw-confluent" and importlib.util.find_spec("confluent_kafka") is None:
            print("confluent-kafka is not installed (pip install -e '.[bench]')", file=sys.stderr)
            return SKIPPED
        print(orjson.dumps(run_one(args)).decode())
        return 0
    with broker() as bootstrap:
        if bootstrap is None:
            return SKIPPED
        rows = measure(args, bootstrap)
    if args.json:
        print(orjson.dumps(rows).decode())
        return 0
    print(f"{args.records:,} records of ~246 B, {args.partitions} partitions, batch {args.batch}, "
          f"medians of {args.repeats}")
    raw = next((row for row in rows if row["contender"] == "raw-aiokafka"), None)
    for row in rows:
        versus = "" if raw is None else (
            f"  {row['records_per_s'] / raw['records_per_s']:.2f}x raw aiokafka's records/s"
            f" at {row['cpu_us_per_record'] / raw['cpu_us_per_record']:.2f}x its CPU")
        print(f"  {row['contender']:>16}: {row['records_per_s']:>10,} records/s  {row['cpu_us_per_record']:>6.2f}"
              f" CPU µs/record  {row['peak_rss_mib']:>5.0f} MiB peak RSS{versus}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
