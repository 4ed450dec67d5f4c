"""``python -m benchmarks``: every contender side by side, each in a fresh process, medians of interleaved reps.

For each shard count the harness writes one log of click events (~246 B of JSON each) in its
own process; then, rep after rep, every contender drains the same records in a fresh process of
its own, one pass each (a warm heap, a best-of-N or a different record size would flatter one
side):

- ``floor``: a bare ``orjson.loads`` loop over the records (read beforehand, not timed);
- ``streamfn``: a pipeline over a copy of the log, with the ``noop`` and ``json`` handlers
  (``benchmarks/handlers.py``) at each batch size; it then appends ~1k records/s in bursts
  (20 chunks a second) and records each record's append-to-handled latency;
- ``bytewax`` (when installed: ``pip install -e '.[bench]'``): ``flat_map_batch`` decoding
  each batch read from the same log.

Reported per contender: records/s, CPU µs per record (less sensitive to a busy machine), page
faults per million records, peak RSS (VmHWM of that process); ratios to the floor and to Bytewax
for the JSON rows; for the no-op handler µs per batch only (it does not decode: no ratio). The
medians of ``--reps`` interleaved reps are reported. Connector benchmarks
(``benchmarks/kinesis_vs_raw.py``, ``benchmarks/kafka_vs_raw.py``) run after, each as
``python -m benchmarks.<name> --json`` (exit 77: no server, skipped).

Results: ``benchmarks/results/bench-<time>.json`` and ``latest.json`` (with the git commit and
package versions) and ``local_log.png`` (matplotlib, in the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from .common import SKIPPED, git_commit, prepare_log, versions

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CONNECTORS = ("kinesis_vs_raw", "kafka_vs_raw")
#: Handlers whose work is the floor loop's work (the rest do nothing with the records).
DECODING = {"json", "json-sync"}
#: Batches this small drain a quarter of ``--records``: one handler call per record is slow.
SMALL_BATCH = 10


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000, help="records per run (default 200000)")
    parser.add_argument("--handlers", default="noop,json", help="noop,json,json-sync")
    parser.add_argument("--batches", default="1,100,1000")
    parser.add_argument("--shards", default="1,16")
    parser.add_argument("--reps", type=int, default=3, help="interleaved reps; medians are reported (default 3)")
    parser.add_argument("--full", action="store_true", help="shards 1,16,256,1024 and the sync JSON handler")
    parser.add_argument("--live-seconds", type=float, default=2.0, help="live phase for latency (default 2 s)")
    parser.add_argument("--live-rate", type=int, default=1_000, help="records/s appended in the live phase")
    parser.add_argument("--producer", choices=["process", "thread"], default="process",
                        help="the live phase's producer: a process of its own (default, as in use) or a thread"
                        " of the pipeline's process")
    parser.add_argument("--no-peers", action="store_true", help="skip Bytewax")
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


def records_for(batch: int, records: int) -> int:
    return max(1, records // 4) if batch <= SMALL_BATCH else records


class Contender:
    """One process to run per rep: its command line and the log it reads (copied first if it writes)."""

    def __init__(self, key: str, module: str, log: Path, args: list[str], *, writes: bool = False) -> None:
        self.key = key
        self.module = module
        self.log = log
        self.args = args
        self.writes = writes
        self.skipped = False

    def command(self, log: Path) -> list[str]:
        return [sys.executable, "-m", f"benchmarks.{self.module}", "--log", str(log), *self.args]

    def run(self, scratch: Path) -> dict[str, Any] | None:
        log = self.log
        if self.writes:
            log = scratch / "run.sqlite3"
            shutil.copyfile(self.log, log)
        try:
            done = subprocess.run(self.command(log), cwd=HERE.parent, capture_output=True, check=False, timeout=1800)
        finally:
            if self.writes:
                for leftover in scratch.glob("run.sqlite3*"):
                    leftover.unlink()
        if done.returncode == SKIPPED:
            print(f"  {self.key}: skipped ({done.stderr.decode().strip()})", file=sys.stderr)
            self.skipped = True
            return None
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(self.command(log))} failed:\n{done.stderr.decode()[-3000:]}")
        row: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
        row["command"] = " ".join(["python", "-m", f"benchmarks.{self.module}", "--log", "LOG", *self.args])
        return row


def contenders(args: argparse.Namespace, logs: dict[tuple[int, int], Path]) -> list[Contender]:
    found = []
    live = ["--live-seconds", str(args.live_seconds), "--live-rate", str(args.live_rate), "--producer", args.producer]
    for shards in ints(args.shards):
        found.append(Contender(f"floor shards={shards}", "floor", logs[shards, args.records],
                               ["--shards", str(shards)]))
        for handler in args.handlers.split(","):
            for batch in ints(args.batches):
                records = records_for(batch, args.records)
                found.append(Contender(
                    f"streamfn {handler} batch={batch} shards={shards}", "local_log", logs[shards, records],
                    ["--handler", handler, "--batch", str(batch), "--shards", str(shards), "--records", str(records),
                     *live], writes=True))
        if not args.no_peers:
            for batch in ints(args.batches):
                if batch > SMALL_BATCH:
                    found.append(Contender(f"bytewax batch={batch} shards={shards}", "bytewax_flow",
                                           logs[shards, args.records],
                                           ["--shards", str(shards), "--batch", str(batch)]))
    return found


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Numbers: the median over the reps; the rest as in the first run."""
    row = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            row[key] = statistics.median(run[key] for run in runs)
    row["reps"] = len(runs)
    return row


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """JSON rows get their ratio to the floor (records/s, and CPU per record) and to Bytewax."""
    floors = {row["shards"]: row for row in rows if row["contender"] == "floor"}
    peers = {(row["batch"], row["shards"]): row for row in rows if row["contender"] == "bytewax"}
    for row in rows:
        decoding = row["contender"] == "bytewax" or row.get("handler") in DECODING
        floor = floors.get(row["shards"])
        if decoding and floor is not None:
            row["x_floor"] = row["records_per_s"] / floor["records_per_s"]
            row["x_floor_cpu"] = floor["cpu_us_per_record"] / row["cpu_us_per_record"]
        peer = peers.get((row.get("batch"), row["shards"]))
        if row["contender"] == "streamfn" and decoding and peer is not None:
            row["x_bytewax"] = row["records_per_s"] / peer["records_per_s"]
            row["x_bytewax_cpu"] = peer["cpu_us_per_record"] / row["cpu_us_per_record"]
    return rows


def cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    return "" if value is None else fmt.format(value)


DECODING_COLUMNS = (
    ("contender", "contender", "{}"), ("batch", "batch", "{}"), ("shards", "shards", "{}"),
    ("records/s", "records_per_s", "{:,.0f}"), ("CPU µs/rec", "cpu_us_per_record", "{:.2f}"),
    ("x floor", "x_floor", "{:.2f}"), ("x floor CPU", "x_floor_cpu", "{:.2f}"),
    ("x bytewax", "x_bytewax", "{:.2f}"), ("faults/M rec", "faults_per_m_records", "{:,.0f}"),
    ("peak RSS MiB", "peak_rss_mib", "{:.0f}"), ("p50 ms", "latency_p50_ms", "{:.1f}"),
    ("p99 ms", "latency_p99_ms", "{:.1f}"),
)
NOOP_COLUMNS = (
    ("batch", "batch", "{}"), ("shards", "shards", "{}"), ("µs/batch", "us_per_batch", "{:.1f}"),
    ("CPU µs/batch", "cpu_us_per_batch", "{:.1f}"), ("faults/M rec", "faults_per_m_records", "{:,.0f}"),
    ("peak RSS MiB", "peak_rss_mib", "{:.0f}"), ("anon idle MiB", "settled_anon_mib", "{:.0f}"),
    ("p50 ms", "latency_p50_ms", "{:.1f}"), ("p99 ms", "latency_p99_ms", "{:.1f}"),
)


def table(rows: list[dict[str, Any]], columns: tuple[tuple[str, str, str], ...], *, markdown: bool = False) -> str:
    cells = [[title for title, _, _ in columns]] + [[cell(row, key, fmt) for _, key, fmt in columns] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(line) + " |" for line in cells]
        lines.insert(1, "|" + "|".join("---" if i < 3 else "---:" for i in range(len(columns))) + "|")
        return "\n".join(lines) + "\n"
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in cells) + "\n"


def generic_table(rows: list[dict[str, Any]]) -> str:
    """A connector benchmark's rows, whatever their keys (those of the first row, in its order)."""
    keys = list(rows[0]) if rows else []

    def show(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.2f}"
        return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)

    cells = [keys] + [[show(row.get(key, "")) for key in keys] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(keys))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in cells) + "\n"


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.1f} before starting: wall-clock figures will be noisy "
              "(CPU µs per record less so)", file=sys.stderr)
    started = time.monotonic()
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="streamfn-bench-") as tmp:
        folder = Path(tmp)
        logs: dict[tuple[int, int], Path] = {}
        for shards in ints(args.shards):
            for records in sorted({records_for(batch, args.records) for batch in ints(args.batches)}
                                  | {args.records}):
                path = logs[shards, records] = folder / f"log-{shards}-{records}.sqlite3"
                prepare_log(path, records, shards)
        everyone = contenders(args, logs)
        for rep in range(args.reps):
            for contender in everyone:
                if contender.skipped:
                    continue
                print(f"  rep {rep + 1}/{args.reps}: {contender.key} ...", file=sys.stderr, flush=True)
                row = contender.run(folder)
                if row is not None:
                    runs[contender.key].append(row)
    rows = with_ratios([median_row(found) for found in runs.values()])
    connectors = {} if args.no_connectors else {
        name: found for name in CONNECTORS if (found := run_connector(name)) is not None}
    decoding = [row for row in rows if row.get("handler", "json") in DECODING]
    noop = [row for row in rows if row.get("handler") == "noop"]
    print(f"\nlocal log, {args.records:,} records of ~246 B per run, medians of {args.reps} interleaved reps, "
          f"{os.cpu_count()} CPUs ({time.monotonic() - started:.0f} s)\n")
    print("JSON handlers, the floor and peers (records/s, CPU µs per record):\n")
    print(table(decoding, DECODING_COLUMNS, markdown=args.markdown))
    print("no-op handler (the engine's own cost per batch):\n")
    print(table(noop, NOOP_COLUMNS, markdown=args.markdown))
    for name, found in connectors.items():
        print(f"{name} (against its raw client loop):\n")
        print(generic_table(found))
    report = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "commit": git_commit(),
              "versions": versions(), "load_average_1m": load, "records": args.records, "reps": args.reps,
              "argv": sys.argv[1:] if argv is None else argv, "local_log": rows, "runs": runs,
              "connectors": connectors}
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for path in (args.out / f"bench-{stamp}.json", args.out / "latest.json"):
        path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"results: {args.out / f'bench-{stamp}.json'}", file=sys.stderr)
    if not args.no_chart:
        from .chart import draw

        chart = draw(report, args.out / "local_log.png")
        print(f"chart: {chart}" if chart else "chart: skipped (pip install -e '.[bench]')", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
