"""How long a local append waits for its commit: the WAL checkpoint after it, or inside it.

A record's arrival time is taken when its append's transaction starts; readers see it once the
commit is done. SQLite's automatic checkpoint (two fsyncs) runs inside the commit that takes the
WAL past 1,000 frames; the log runs its own after the commit (``streamfn/connectors/local/wal.py``).
Both modes append the same bursts (``--records`` click events over ``--shards`` shards, ``--every``
seconds apart) to a copy of the same prepared log, each in a fresh process, reps interleaved:

- ``after``: the log as it is;
- ``inside``: SQLite's automatic checkpoint at its default, the log's own switched off (as before).

``python -m benchmarks.append_commit --shards 16 --appends 1500 --reps 3`` prints, per mode, the
medians over reps of the start-to-commit p50 / p99 / p99.9 / max (ms), the appends over 5 ms, and
the whole ``append()`` call's p50 and CPU per append. It measures the producer's side only: not
when a pipeline's reader wakes, nor its handling.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from streamfn.connectors.local import wal
from streamfn.connectors.local.log import LocalLog

from .common import SEED, STREAM, event_chunks, prepare_log

MODES = ("inside", "after")
SLOW_MS = 5.0


def child(log_path: Path, mode: str, appends: int, records: int, every: float) -> dict[str, Any]:
    """One mode's appends in this (fresh) process."""
    if mode == "inside":
        wal.SAFETY_FRAMES = wal.CHECKPOINT_FRAMES  # SQLite's default, inside the commit
        wal.CHECKPOINT_FRAMES = sys.maxsize  # the log's own never due
    log = LocalLog(log_path)
    committed: list[float] = []
    log.add_listener(lambda stream, tips: committed.append(time.perf_counter()))
    to_commit, whole = [], []
    cpu = time.process_time()
    for chunk in event_chunks(appends * records, SEED + 1, records):
        started = time.perf_counter()
        log.append(STREAM, chunk)
        whole.append(time.perf_counter() - started)
        to_commit.append(committed[-1] - started)
        time.sleep(every)
    cpu = time.process_time() - cpu
    log.close()
    ms = sorted(1000 * s for s in to_commit)

    def at(q: float) -> float:
        return ms[min(len(ms) - 1, int(len(ms) * q))]

    return {"mode": mode, "p50": at(0.5), "p99": at(0.99), "p999": at(0.999), "max": ms[-1],
            "slow": sum(x > SLOW_MS for x in ms), "whole_p50": 1000 * statistics.median(whole),
            "cpu_ms_per_append": 1000 * cpu / len(ms)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--prepared", type=int, default=200_000, help="records in the log before the appends")
    parser.add_argument("--appends", type=int, default=1500)
    parser.add_argument("--records", type=int, default=50, help="records per append")
    parser.add_argument("--every", type=float, default=0.005, help="seconds between appends")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--log", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = child(args.log, args.child, args.appends, args.records, args.every)
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
        return 0
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="streamfn-bench-") as tmp:
        prepared = Path(tmp) / "prepared.sqlite3"
        prepare_log(prepared, args.prepared, args.shards)
        for rep in range(args.reps):
            for mode in MODES:
                copy = Path(tmp) / f"run-{rep}-{mode}.sqlite3"
                shutil.copyfile(prepared, copy)
                print(f"  rep {rep + 1}/{args.reps}: {mode} ...", file=sys.stderr)
                out = subprocess.run(
                    [sys.executable, "-m", "benchmarks.append_commit", "--child", mode, "--log", str(copy),
                     "--appends", str(args.appends), "--records", str(args.records), "--every", str(args.every)],
                    check=True, capture_output=True, text=True).stdout
                results[mode].append(orjson.loads(out))
    print(f"{args.appends} appends of {args.records} records over {args.shards} shards, every {args.every}s, "
          f"medians of {args.reps} interleaved reps (start of the append to its commit, ms):")
    print(f"{'checkpoint':>10} {'p50':>6} {'p99':>6} {'p99.9':>6} {'max':>6} {'>5 ms':>6} {'append p50':>10} "
          f"{'CPU/append':>10}")
    for mode in MODES:
        runs = results[mode]

        def median(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return float(statistics.median(r[key] for r in runs))

        print(f"{mode:>10} {median('p50'):6.2f} {median('p99'):6.2f} {median('p999'):6.2f} {median('max'):6.2f} "
              f"{median('slow'):6.0f} {median('whole_p50'):10.2f} {median('cpu_ms_per_append'):10.2f}")
    inside, after = (statistics.median(r["p999"] for r in results[mode]) for mode in MODES)
    print(f"p99.9 after / inside: {after / inside:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
