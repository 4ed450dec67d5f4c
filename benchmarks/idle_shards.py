"""Idle shards: a pipeline over ``--shards`` local shards with nothing arriving, CPU share of one core.

``python -m benchmarks.idle_shards --shards 1024 --seconds 5`` prints one JSON object: the
process's CPU seconds per wall second once every shard is idle (goal: <= 1 % at 1,024 shards),
and its peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from streamfn.connectors.local.log import LocalLog
from streamfn.engine.memory import freeze_startup, tune_process
from streamfn.engine.pipeline import Pipeline

from .common import STREAM, status_kib
from .local_log import Scenario, pipeline_for


async def run(shards: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="streamfn-bench-") as tmp:
        scenario = Scenario(handler="noop", batch=100, shards=shards, records=0)
        loaded = pipeline_for(scenario, Path(tmp))
        log = LocalLog(loaded.context.state_dir / "log.sqlite3")
        log.create_stream(STREAM, shards)
        tune_process()  # as `streamfn run` does
        pipeline = Pipeline(loaded)
        await pipeline.open()
        freeze_startup()  # as `streamfn run` does, once its pipelines are open
        stop = asyncio.Event()
        task = asyncio.create_task(pipeline.run(stop))
        try:
            await asyncio.sleep(max(2.0, shards / 500))  # every shard started and idle
            cpu0, wall0 = time.process_time(), time.perf_counter()
            await asyncio.sleep(seconds)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        finally:
            stop.set()
            await task
            await pipeline.shutdown()
            log.close()
    return {"scenario": f"idle shards={shards}", "shards": shards, "seconds": wall, "cpu_seconds": cpu,
            "cpu_share": cpu / wall, "peak_rss_mib": status_kib("VmHWM") / 1024}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    from streamfn.engine.daemon import install_event_loop_policy

    install_event_loop_policy()
    result = asyncio.run(run(args.shards, args.seconds))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
