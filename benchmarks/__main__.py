"""``python -m benchmarks``: every scenario side by side in one run, with the floor measured alongside.

Local log scenarios (no server needed): no-op and JSON handlers x batch sizes x shard counts,
each in a process of its own (CPU time and peak memory are then its own), against the floor:
a bare ``orjson.loads`` loop over the same records, measured by each scenario's process right
after its pipeline ran (so load on the machine weighs on both alike). Connector benchmarks
(``benchmarks/kinesis_vs_raw.py``, ``benchmarks/kafka_vs_raw.py``) run when present: each is
called as ``python -m benchmarks.<name> --json`` and prints a JSON list of rows (exit 77: no
server available, skipped).

Default grid: handlers noop,json x batch 100,1000,10000 x shards 1,16 (about a minute on two
cores). ``--full`` adds shards 256 and 1024 and the sync JSON handler. Results are written to
``benchmarks/results/`` as JSON and as a PNG chart (matplotlib, optional).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CONNECTORS = ("kinesis_vs_raw", "kafka_vs_raw")
SKIPPED = 77
#: Handlers whose work is the floor loop's work (the rest do nothing with the records).
DECODING = {"json", "json-sync"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=500_000, help="records per scenario (default 500000)")
    parser.add_argument("--handlers", default="noop,json", help="noop,json,json-sync")
    parser.add_argument("--batches", default="100,1000,10000")
    parser.add_argument("--shards", default="1,16")
    parser.add_argument("--full", action="store_true", help="shards 1,16,256,1024 and the sync JSON handler")
    parser.add_argument("--live-seconds", type=float, default=2.0, help="live phase for latency (default 2 s)")
    parser.add_argument("--live-rate", type=int, default=2_000, help="records/s appended in the live phase")
    parser.add_argument("--no-connectors", action="store_true", help="skip the connector benchmarks")
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.full:
        args.shards, args.handlers = "1,16,256,1024", "noop,json,json-sync"
    return args


def ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def run_scenario(handler: str, batch: int, shards: int, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.local_log", "--handler", handler, "--batch", str(batch),
               "--shards", str(shards), "--records", str(args.records), "--live-seconds", str(args.live_seconds),
               "--live-rate", str(args.live_rate)]
    done = subprocess.run(command, cwd=HERE.parent, capture_output=True, check=False, timeout=1200)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr.decode()}")
    result: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
    return result


def against_floor(result: dict[str, Any], records: int) -> dict[str, Any]:
    """Ratio to the floor, and the engine's own µs per batch (the handler's share of the floor removed).

    The floor is the one the scenario's process measured over the same records right after it ran.
    """
    floor_seconds = result["floor_seconds"]
    floor_rate = records / floor_seconds
    per_record_us = floor_seconds / records * 1e6
    handler_us = per_record_us * result["mean_batch"] if result["handler"] in DECODING else 0.0
    cpu_rate = result["records"] / result["cpu_seconds"] if result["cpu_seconds"] > 0 else float("nan")
    return {**result, "floor_records_per_s": floor_rate, "records_per_cpu_s": cpu_rate,
            "ratio_to_floor": result["records_per_s"] / floor_rate,
            "overhead_us_per_batch": result["us_per_batch"] - handler_us}


def run_connector(name: str) -> list[dict[str, Any]] | None:
    """A connector benchmark's rows, or None when it is absent or has no server to talk to."""
    if not (HERE / f"{name}.py").exists():
        return None
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--json"], cwd=HERE.parent,
                          capture_output=True, check=False, timeout=1800)
    if done.returncode == SKIPPED:
        print(f"{name}: skipped ({done.stderr.decode().strip() or 'no server'})", file=sys.stderr)
        return None
    if done.returncode != 0:
        print(f"{name}: failed (exit {done.returncode}):\n{done.stderr.decode()[-2000:]}", file=sys.stderr)
        return None
    try:
        rows = orjson.loads(done.stdout.strip().splitlines()[-1])
    except (orjson.JSONDecodeError, IndexError):
        print(f"{name}: output was not a JSON line:\n{done.stdout.decode()[-2000:]}", file=sys.stderr)
        return None
    return rows if isinstance(rows, list) else [rows]


COLUMNS = (
    ("scenario", "scenario", "{}"), ("records/s", "records_per_s", "{:,.0f}"),
    ("floor/s", "floor_records_per_s", "{:,.0f}"), ("x floor", "ratio_to_floor", "{:.2f}"),
    ("records/CPU s", "records_per_cpu_s", "{:,.0f}"),
    ("µs/batch", "us_per_batch", "{:,.0f}"), ("overhead µs/batch", "overhead_us_per_batch", "{:,.0f}"),
    ("mean batch", "mean_batch", "{:,.0f}"), ("p50 ms", "latency_p50_ms", "{:.1f}"),
    ("p99 ms", "latency_p99_ms", "{:.1f}"), ("CPU s", "cpu_seconds", "{:.2f}"),
    ("peak RSS MiB", "peak_rss_mib", "{:.0f}"), ("anon KiB/shard", "anon_per_shard_kib", "{:,.0f}"),
)


def table(rows: list[dict[str, Any]], *, markdown: bool = False) -> str:
    cells = [[title for title, _, _ in COLUMNS]]
    cells += [[fmt.format(row[key]) for _, key, fmt in COLUMNS] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(line) + " |" for line in cells]
        lines.insert(1, "|" + "|".join("---" if i == 0 else "---:" for i in range(len(COLUMNS))) + "|")
        return "\n".join(lines) + "\n"
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths,
                                                                                               strict=True)))
                     for line in cells) + "\n"


def generic_table(rows: list[dict[str, Any]]) -> str:
    """A connector benchmark's rows, whatever their keys (those of the first row, in its order)."""
    keys = list(rows[0]) if rows else []

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.2f}"
        return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)

    cells = [keys] + [[cell(row.get(key, "")) for key in keys] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(keys))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in cells) + "\n"


def machine() -> dict[str, Any]:
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "loop": loop, "processor": platform.processor() or platform.machine(),
            "load_average_1m": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.1f} before starting: wall-clock figures will be noisy "
              "(records/CPU s less so)", file=sys.stderr)
    rows = []
    started = time.monotonic()
    for handler in args.handlers.split(","):
        for shards in ints(args.shards):
            for batch in ints(args.batches):
                print(f"  {handler} batch={batch} shards={shards} ...", file=sys.stderr, flush=True)
                rows.append(against_floor(run_scenario(handler, batch, shards, args), args.records))
    connectors = {} if args.no_connectors else {
        name: found for name in CONNECTORS if (found := run_connector(name)) is not None}
    print(f"\nlocal log, {args.records:,} records per scenario, {machine()['cpus']} CPUs "
          f"({time.monotonic() - started:.0f} s)\n")
    print(table(rows))
    if args.markdown:
        print(table(rows, markdown=True))
    for name, found in connectors.items():
        print(f"{name} (against its raw client loop):\n")
        print(generic_table(found))
    floor_rate = statistics.median(row["floor_records_per_s"] for row in rows)
    print(f"floor (bare orjson.loads over the same records, median of the scenarios): {floor_rate:,.0f} records/s\n")
    report = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
              "records": args.records, "floor_records_per_s": floor_rate,
              "local_log": rows, "connectors": connectors}
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for path in (args.out / f"bench-{stamp}.json", args.out / "latest.json"):
        path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"results: {args.out / f'bench-{stamp}.json'}", file=sys.stderr)
    if not args.no_chart:
        from .chart import draw

        chart = draw(report, args.out / "local_log.png")
        print(f"chart: {chart}" if chart else "chart: skipped (pip install matplotlib)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
