"""The live phase's producer: appends bursts of records to a local log at a steady rate.

By default ``benchmarks.local_log`` runs it as a process of its own, as producers are in use
(``streamfn produce``, an application writing the log): its appends, and the merging of small
blocks that follows them, then cost the pipeline's process nothing, and its shards are woken the
way another process's appends wake them (the tip watcher's inotify). ``--producer thread`` runs
it in a thread of the pipeline's process instead, as earlier rounds measured: its Python work
then shares the pipeline's GIL.

``python -m benchmarks.live_producer --log L --rate 1000 --seconds 2`` prints one JSON object:
``{"appended": N}``.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import orjson

from streamfn.connectors.local.log import LocalLog

from .common import SEED, STREAM, event_chunks

#: Bursts a second: each appends ``rate / CHUNKS_PER_SECOND`` records in one transaction.
CHUNKS_PER_SECOND = 20


def produce(log: LocalLog, rate: int, seconds: float, stop: threading.Event | None = None) -> int:
    """Append ``rate`` records/s in bursts for ``seconds`` (or until ``stop``); how many were appended."""
    per_chunk = max(1, rate // CHUNKS_PER_SECOND)
    appended, started = 0, time.monotonic()
    for chunk in event_chunks(int(rate * seconds) + per_chunk, SEED + 1, per_chunk):
        if (stop is not None and stop.is_set()) or time.monotonic() - started >= seconds:
            break
        appended += log.append(STREAM, chunk)
        time.sleep(1 / CHUNKS_PER_SECOND)
    return appended


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--rate", type=int, required=True, help="records/s")
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)
    log = LocalLog(args.log)
    try:
        appended = produce(log, args.rate, args.seconds)
    finally:
        log.close()
    sys.stdout.write(orjson.dumps({"appended": appended}).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
