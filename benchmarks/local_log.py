"""One local-log scenario, in a fresh process over a log another process wrote (``--log``).

Two phases over one pipeline:
1. throughput: the pipeline drains the ``records`` already in the log; records/s, CPU µs per
   record, page faults and batches come from this phase (the no-op handler's figure is µs per
   batch: what is left is the engine's own cost).
2. live: a producer appends small chunks at ``live_rate`` records/s for ``live_seconds`` while
   the pipeline runs; the handler records, per record, the seconds from append to the end of its
   call (p50/p99). The producer is a process of its own (``benchmarks/live_producer.py``), as
   producers are in use; ``--producer thread`` runs it in a thread of this process instead.

``python -m benchmarks.local_log --log L --handler json --batch 1000 --shards 16`` prints one JSON
object. The log is changed by the live phase: give each run a copy (the harness does).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Literal

import msgspec
import orjson

from streamfn.config import LoadedPipeline, pipeline_config_type
from streamfn.connectors.local.log import LocalLog
from streamfn.engine.heap import IDLE_CHECK_SECONDS, release_when_idle
from streamfn.engine.memory import freeze_startup, tune_process
from streamfn.engine.pipeline import Pipeline

from . import handlers
from .common import STREAM, Span, prepare_log, status_kib
from .live_producer import produce

#: Seconds after the live phase before anonymous memory is sampled: shards go idle after 0.5 s, and
#: the daemon gives free heap back after one idle look (``engine/heap.py``).
SETTLE_SECONDS = 1.5 + 2 * IDLE_CHECK_SECONDS
HANDLERS = {"noop": "benchmarks.handlers:noop", "json": "benchmarks.handlers:json",
            "json-sync": "benchmarks.handlers:json_sync"}


class Scenario(msgspec.Struct, kw_only=True, frozen=True):
    handler: str
    batch: int
    shards: int
    records: int
    live_seconds: float = 2.0
    live_rate: int = 2_000
    producer: Literal["process", "thread"] = "process"

    @property
    def label(self) -> str:
        return f"{self.handler} batch={self.batch} shards={self.shards}"


def anon_rss_kib() -> int:
    """Anonymous resident memory: RSS without file-backed pages (the local log is memory-mapped,
    so pages of the log file read so far count in plain RSS while they stay cached)."""
    return status_kib("RssAnon")


class PeakSampler:
    """Samples anonymous RSS every ``every`` seconds in a thread and keeps the peak."""

    def __init__(self, every: float = 0.05) -> None:
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


def pipeline_for(scenario: Scenario, folder: Path, log: Path | None = None) -> LoadedPipeline:
    source: dict[str, Any] = {"type": "local", "stream": STREAM, "shards": scenario.shards}
    if log is not None:
        source["path"] = str(log)
    config = msgspec.convert({
        "name": "bench", "handler": HANDLERS[scenario.handler], "state_dir": str(folder / "state"),
        "source": source,
        "batching": {"max_records": scenario.batch, "window": 0.0},
    }, pipeline_config_type())
    return LoadedPipeline(config=config, path=folder / "pipeline.toml")


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


async def run(scenario: Scenario, log_path: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="streamfn-bench-") as tmp:
        loaded = pipeline_for(scenario, Path(tmp), log_path)
        baseline_kib = anon_rss_kib()
        tune_process()  # as `streamfn run` does
        pipeline = Pipeline(loaded)
        await pipeline.open()
        freeze_startup()  # as `streamfn run` does, once its pipelines are open
        stop = asyncio.Event()
        task = asyncio.create_task(pipeline.run(stop))
        releasing = asyncio.create_task(release_when_idle(lambda: totals(pipeline)[0]))  # as `streamfn run` does
        log = LocalLog(log_path)  # the live phase's producer: another connection, as another process's
        try:
            with PeakSampler() as memory:
                with Span() as span:
                    await wait_handled(pipeline, scenario.records, 1200)
                _, batches = totals(pipeline)
                latencies = await live_phase(pipeline, log, log_path, scenario)
                await asyncio.sleep(SETTLE_SECONDS)  # every shard idle again: what is still held stays
                settled_kib = anon_rss_kib()
        finally:
            releasing.cancel()
            stop.set()
            await task
            await pipeline.shutdown()
            log.close()
    figures = span.figures(scenario.records)
    return {
        "contender": "streamfn", "scenario": scenario.label, "handler": scenario.handler, "batch": scenario.batch,
        "shards": scenario.shards, **figures, "batches": batches,
        "mean_batch": scenario.records / batches if batches else 0.0,
        "us_per_batch": span.seconds / batches * 1e6 if batches else 0.0,
        "cpu_us_per_batch": span.cpu_seconds / batches * 1e6 if batches else 0.0,
        "peak_anon_mib": memory.peak / 1024, "settled_anon_mib": settled_kib / 1024,
        "anon_per_shard_kib": max(0, memory.peak - baseline_kib) / scenario.shards,
        "latency_p50_ms": percentile(latencies, 50) * 1000, "latency_p99_ms": percentile(latencies, 99) * 1000,
        "latency_samples": len(latencies),
    }


async def live_phase(pipeline: Pipeline, log: LocalLog, log_path: Path, scenario: Scenario) -> list[float]:
    """Append at a steady rate while the pipeline runs; the handler records each record's latency."""
    handled_before, _ = totals(pipeline)
    handlers.LATENCIES.clear()
    handlers.MEASURE = True
    halt = threading.Event()
    try:
        if scenario.producer == "thread":
            appended = await asyncio.to_thread(produce, log, scenario.live_rate, scenario.live_seconds, halt)
        else:
            appended = await produce_in_process(log_path, scenario)
        await wait_handled(pipeline, handled_before + appended, 60)
    finally:
        halt.set()
        handlers.MEASURE = False
    return list(handlers.LATENCIES)


async def produce_in_process(log_path: Path, scenario: Scenario) -> int:
    """Run ``benchmarks.live_producer`` in a process of its own; how many records it appended."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.live_producer", "--log", str(log_path),
        "--rate", str(scenario.live_rate), "--seconds", str(scenario.live_seconds),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"the live producer failed (exit {process.returncode}): {err.decode()[-2000:]}")
    return int(orjson.loads(out)["appended"])


def percentile(values: list[float], pct: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", type=Path, help="a log prepared by another process (default: write one first,"
                        " in this process: quicker, but the heap is then warm)")
    parser.add_argument("--handler", choices=sorted(HANDLERS), default="json")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--records", type=int, default=200_000, help="records in the log (default 200000)")
    parser.add_argument("--live-seconds", type=float, default=2.0)
    parser.add_argument("--live-rate", type=int, default=2_000)
    parser.add_argument("--producer", choices=["process", "thread"], default="process",
                        help="where the live phase's producer runs (default: a process of its own)")
    args = parser.parse_args(argv)
    scenario = Scenario(handler=args.handler, batch=args.batch, shards=args.shards, records=args.records,
                        live_seconds=args.live_seconds, live_rate=args.live_rate, producer=args.producer)
    from streamfn.engine.daemon import install_event_loop_policy

    install_event_loop_policy()
    with tempfile.TemporaryDirectory(prefix="streamfn-bench-log-") as tmp:
        log_path = args.log
        if log_path is None:
            log_path = Path(tmp) / "log.sqlite3"
            prepare_log(log_path, args.records, args.shards)
        result = asyncio.run(run(scenario, log_path))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
