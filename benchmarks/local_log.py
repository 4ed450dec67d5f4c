"""One local-log scenario, run in a process of its own so its CPU time and peak RSS are its own.

Two phases over one pipeline on a fresh log:
1. throughput: ``records`` click events are appended first, then the pipeline drains them;
   records/s, CPU seconds and batches come from this phase.
2. live: a producer thread appends small chunks at ``live_rate`` records/s for ``live_seconds``
   while the pipeline runs; the handler records, per record, the seconds from append to the end
   of its call (p50/p99).

``python -m benchmarks.local_log --handler json --batch 1000 --shards 16`` prints one JSON object.
The floor, a bare ``orjson.loads`` loop over the same records read back from the log, is measured
in the same process right after the pipeline ran (``floor_seconds``), so machine load that slows
one slows the other.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import orjson

from streamfn.config import LoadedPipeline, PipelineConfig
from streamfn.connectors.local.log import LocalLog, shard_id_of
from streamfn.connectors.local.produce import synthetic_clicks
from streamfn.engine.pipeline import Pipeline

from . import handlers

HANDLERS = {"noop": "benchmarks.handlers:noop", "json": "benchmarks.handlers:json",
            "json-sync": "benchmarks.handlers:json_sync"}
SEED = 7
CHUNK = 10_000
STREAM = "bench"


class Scenario(msgspec.Struct, kw_only=True, frozen=True):
    handler: str
    batch: int
    shards: int
    records: int
    live_seconds: float = 2.0
    live_rate: int = 2_000

    @property
    def label(self) -> str:
        return f"{self.handler} batch={self.batch} shards={self.shards}"


def event_chunks(count: int, seed: int = SEED, size: int = CHUNK) -> Iterator[list[tuple[str, bytes]]]:
    """The benchmark's records, in chunks, so a large run never holds them all."""
    records = synthetic_clicks(count, seed)
    while chunk := list(itertools.islice(records, size)):
        yield chunk


def floor(count: int, repeats: int = 3) -> float:
    """Seconds of the fastest bare ``orjson.loads`` loop over the same ``count`` records."""
    # A compact copy: each buffer orjson.dumps returns keeps ~4 KiB resident here, which would
    # make the floor's process, and every child forked from it, look big.
    return decode_loop([memoryview(data).tobytes() for _, data in synthetic_clicks(count, SEED)], repeats)


def logged_data(log: LocalLog, shards: int) -> list[bytes]:
    """Every record's data in the log, shard by shard."""
    datas: list[bytes] = []
    for index in range(shards):
        after = 0
        while records := log.read(STREAM, shard_id_of(index), after, 50_000):
            datas.extend(r.data for r in records)
            after = records[-1].sequence
    return datas


def decode_loop(datas: list[bytes], repeats: int = 3) -> float:
    """Seconds of the fastest of ``repeats`` bare decode loops over ``datas``."""
    best = float("inf")
    loads = orjson.loads
    for _ in range(repeats):
        started = time.perf_counter()
        for data in datas:
            loads(data)
        best = min(best, time.perf_counter() - started)
    return best


def status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmHWM: peak RSS since exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def anon_rss_kib() -> int:
    """Anonymous resident memory: RSS without file-backed pages (the local log is memory-mapped,
    so pages of the log file read so far count in plain RSS while they stay cached)."""
    return status_kib("RssAnon")


class PeakSampler:
    """Samples anonymous RSS every few milliseconds in a thread and keeps the peak."""

    def __init__(self, every: float = 0.005) -> None:
        self.peak = anon_rss_kib()
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.peak = max(self.peak, anon_rss_kib())

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, anon_rss_kib())


def pipeline_for(scenario: Scenario, folder: Path) -> LoadedPipeline:
    config = msgspec.convert({
        "name": "bench", "handler": HANDLERS[scenario.handler], "state_dir": str(folder / "state"),
        "source": {"type": "local", "stream": STREAM, "shards": scenario.shards},
        "batching": {"max_records": scenario.batch, "window": 0.0},
    }, PipelineConfig)
    return LoadedPipeline(config=config, path=folder / "pipeline.toml")


def append_all(log: LocalLog, chunks: Iterable[list[tuple[str, bytes]]]) -> int:
    return sum(log.append(STREAM, chunk) for chunk in chunks)


def totals(pipeline: Pipeline) -> tuple[int, int]:
    """(records handled, batches) over every shard."""
    handled = batches = 0
    for runner in list(pipeline.runners.values()):
        handled += runner.stats.handled
        batches += runner.stats.batches
    return handled, batches


async def wait_handled(pipeline: Pipeline, target: int, limit: float) -> None:
    """Poll the shards' counters (the engine has no completion event to wait on)."""
    async with asyncio.timeout(limit):
        while totals(pipeline)[0] < target:  # noqa: ASYNC110
            await asyncio.sleep(0.002)


def live_producer(log: LocalLog, scenario: Scenario, stop: threading.Event) -> int:
    """Append ``live_rate`` records/s in 20 chunks a second; returns how many were appended."""
    per_chunk = max(1, scenario.live_rate // 20)
    records = synthetic_clicks(int(scenario.live_rate * scenario.live_seconds) + per_chunk, SEED + 1)
    appended, started = 0, time.monotonic()
    while not stop.is_set() and time.monotonic() - started < scenario.live_seconds:
        chunk = list(itertools.islice(records, per_chunk))
        appended += log.append(STREAM, chunk)
        time.sleep(0.05)
    return appended


async def run(scenario: Scenario) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="streamfn-bench-") as tmp:
        folder = Path(tmp)
        loaded = pipeline_for(scenario, folder)
        log = LocalLog(loaded.context.state_dir / "log.sqlite3")
        log.create_stream(STREAM, scenario.shards)
        append_all(log, event_chunks(scenario.records))
        baseline_kib = anon_rss_kib()
        pipeline = Pipeline(loaded)
        await pipeline.open()
        stop = asyncio.Event()
        task = asyncio.create_task(pipeline.run(stop))
        try:
            with PeakSampler() as memory:
                cpu0, started = time.process_time(), time.perf_counter()
                await wait_handled(pipeline, scenario.records, 600)
                elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu0
                _, batches = totals(pipeline)
                latencies = await live_phase(pipeline, log, scenario)
        finally:
            stop.set()
            await task
            await pipeline.shutdown()
        peak_kib = status_kib("VmHWM")  # not ru_maxrss: Linux carries that across exec from the parent
        datas = logged_data(log, scenario.shards)  # the same records (and the live phase's)
        floor_seconds = decode_loop(datas) * scenario.records / len(datas)
        log.close()
    return {
        "scenario": scenario.label, "handler": scenario.handler, "batch": scenario.batch,
        "shards": scenario.shards, "records": scenario.records, "seconds": elapsed,
        "records_per_s": scenario.records / elapsed, "batches": batches,
        "mean_batch": scenario.records / batches if batches else 0.0,
        "us_per_batch": elapsed / batches * 1e6 if batches else 0.0,
        "cpu_seconds": cpu, "peak_rss_mib": peak_kib / 1024, "peak_anon_mib": memory.peak / 1024,
        "anon_per_shard_kib": max(0, memory.peak - baseline_kib) / scenario.shards,
        "latency_p50_ms": percentile(latencies, 50) * 1000, "latency_p99_ms": percentile(latencies, 99) * 1000,
        "latency_samples": len(latencies), "floor_seconds": floor_seconds,
    }


async def live_phase(pipeline: Pipeline, log: LocalLog, scenario: Scenario) -> list[float]:
    """Append at a steady rate while the pipeline runs; the handler records each record's latency."""
    handled_before, _ = totals(pipeline)
    handlers.LATENCIES.clear()
    handlers.MEASURE = True
    halt = threading.Event()
    try:
        appended = await asyncio.to_thread(live_producer, log, scenario, halt)
        await wait_handled(pipeline, handled_before + appended, 60)
    finally:
        halt.set()
        handlers.MEASURE = False
    return list(handlers.LATENCIES)


def percentile(values: list[float], pct: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--handler", choices=sorted(HANDLERS), default="json")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--live-seconds", type=float, default=2.0)
    parser.add_argument("--live-rate", type=int, default=2_000)
    args = parser.parse_args(argv)
    scenario = Scenario(handler=args.handler, batch=args.batch, shards=args.shards, records=args.records,
                        live_seconds=args.live_seconds, live_rate=args.live_rate)
    from streamfn.engine.daemon import install_event_loop_policy

    install_event_loop_policy()
    result = asyncio.run(run(scenario))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
