"""What a batch costs when the handler runs in a process of its own, against the in-process Lambda interface.

    python -m benchmarks.runtime_api [--reps 5] [--calls 300] [--json]

Modes, each measured through a lane's slot (``Invoker.slot().call``, what the shard loop calls),
with the same unmodified Lambda Kinesis handler (it decodes every record's base64 JSON data):

- ``lambda``: ``interface = "lambda"``, a plain ``def`` in streamfn's handler thread;
- ``runtime-api``: ``interface = "runtime-api"``, the handler run by awslambdaric in its own process,
  the event and the answer crossing the Lambda Runtime API over HTTP on 127.0.0.1;
- ``process``: ``isolation = "process"``, streamfn's own worker process (msgpack over the same API).

Each (mode, batch size) runs in a fresh process, the reps interleaved so that load on the machine
weighs on every mode alike; the figures are medians over the reps. µs/batch is wall time per call;
CPU µs/batch counts streamfn's process and the handler's process together.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

HANDLER = '''
import base64
import json


def handler(event, context):
    for record in event["Records"]:
        json.loads(base64.b64decode(record["kinesis"]["data"]))
    return {"batchItemFailures": []}
'''
MODES = ("lambda", "runtime-api", "process")
SIZES = (1, 100)
WARMUP = 20


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (from /proc: the handler process is not our child's
    child we could wait for)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(mode: str, size: int, calls: int, folder: Path) -> dict[str, Any]:
    from streamfn.engine.invoke import Invoker, SlotFactory, load_handler
    from streamfn.handler_api import Context
    from streamfn.lambda_shapes import kinesis_event
    from streamfn.records import Batch, Record
    from streamfn.runtime.slot import LambdaJson, ProcessSlots, RuntimeSpec, WorkerMsgpack

    (folder / "bench_handler.py").write_text(HANDLER)
    payload = orjson.dumps({"user": "u-123456", "event": "click", "page": "/products/42", "ts": time.time(),
                            "props": {"ref": "search", "pos": 3, "tags": ["a", "b", "c"]}, "pad": "x" * 100})
    batch = Batch("shard-0", [Record("shard-0", 49590338271490256608559692538361571095921575989136588898 + i,
                                     f"k{i}", payload, time.time()) for i in range(size)])
    slots: ProcessSlots | None = None
    handler = None
    if mode == "lambda":
        handler = load_handler("bench_handler:handler", [folder])
    elif mode == "runtime-api":
        slots = ProcessSlots(RuntimeSpec(
            pipeline="bench", command=[sys.executable, "-m", "awslambdaric", "bench_handler.handler"],
            handler="bench_handler.handler", task_root=folder, cwd=folder, codec=LambdaJson()))
    else:
        slots = ProcessSlots(RuntimeSpec(
            pipeline="bench", command=[sys.executable, "-m", "streamfn.runtime.worker", "bench_handler:handler",
                                       "--search-dir", str(folder)],
            handler="bench_handler:handler", task_root=folder, cwd=folder, codec=WorkerMsgpack()))
    factory: SlotFactory | None = slots
    invoker = Invoker(handler, interface="runtime-api" if mode == "runtime-api" else "lambda", timeout=60,
                      report_failures=True, slots=factory,
                      lambda_event=lambda b: kinesis_event(b, "arn:aws:kinesis:local:000000000000:stream/s", "local"))
    slot = invoker.slot()
    try:
        for _ in range(WARMUP):
            await slot.call(batch, Context(pipeline="bench", shard_id="shard-0", attempt=0, timeout=60))
        pids = slots.processes() if slots is not None else []
        child_cpu = sum(_cpu_seconds(pid) for pid in pids)
        cpu, started = time.process_time(), time.perf_counter()
        for _ in range(calls):
            result = await slot.call(batch, Context(pipeline="bench", shard_id="shard-0", attempt=0, timeout=60))
            assert result.failed_at is None
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu + sum(_cpu_seconds(pid) for pid in pids) - child_cpu
    finally:
        await invoker.close()
    return {"mode": mode, "size": size, "us_per_batch": wall / calls * 1e6, "cpu_us_per_batch": cpu / calls * 1e6}


def _one(mode: str, size: int, calls: int) -> None:
    from streamfn.engine.daemon import install_event_loop_policy

    install_event_loop_policy()
    with tempfile.TemporaryDirectory() as folder:
        result = asyncio.run(_measure(mode, size, calls, Path(folder)))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.runtime_api", description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--json", action="store_true", help="print the medians as JSON")
    parser.add_argument("--one", nargs=2, metavar=("MODE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        _one(args.one[0], int(args.one[1]), args.calls)
        return 0
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for _ in range(args.reps):
        for size in SIZES:
            for mode in MODES:
                out = subprocess.run([sys.executable, "-m", "benchmarks.runtime_api", "--one", mode, str(size),
                                      "--calls", str(args.calls)], capture_output=True, check=True, text=True)
                runs.setdefault((mode, size), []).append(orjson.loads(out.stdout.strip().splitlines()[-1]))
    rows = []
    for (mode, size), results in runs.items():
        rows.append({"mode": mode, "batch": size,
                     "us_per_batch": statistics.median(r["us_per_batch"] for r in results),
                     "cpu_us_per_batch": statistics.median(r["cpu_us_per_batch"] for r in results)})
    if args.json:
        sys.stdout.write(orjson.dumps(rows).decode() + "\n")
        return 0
    base = {row["batch"]: row for row in rows if row["mode"] == "lambda"}
    print(f"{'mode':<12} {'B':>4} {'µs/batch':>10} {'x lambda':>9} {'CPU µs/batch':>13} {'x lambda':>9}")
    for row in sorted(rows, key=lambda r: (r["batch"], MODES.index(r["mode"]))):
        ref = base[row["batch"]]
        print(f"{row['mode']:<12} {row['batch']:>4} {row['us_per_batch']:>10.0f} "
              f"{row['us_per_batch'] / ref['us_per_batch']:>9.1f} {row['cpu_us_per_batch']:>13.0f} "
              f"{row['cpu_us_per_batch'] / ref['cpu_us_per_batch']:>9.1f}")
    print(f"medians of {args.reps} interleaved reps of {args.calls} calls, each mode and size in a fresh process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
