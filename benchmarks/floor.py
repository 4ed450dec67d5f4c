"""The floor: a bare ``orjson.loads`` loop over the same records, in a fresh process, one pass.

The records are read from the prepared log first (not timed); the one timed pass decodes each.
``python -m benchmarks.floor --log L --shards S`` prints one JSON object (the same figures as a
contender: records/s, CPU µs per record, page faults per million records, peak RSS).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from streamfn.connectors.local.log import LocalLog

from .common import Span, logged_data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--shards", type=int, required=True)
    args = parser.parse_args(argv)
    log = LocalLog(args.log)
    try:
        datas = logged_data(log, args.shards)
    finally:
        log.close()
    loads = orjson.loads
    with Span() as span:
        for data in datas:
            loads(data)
    result = {"contender": "floor", "scenario": f"floor shards={args.shards}", "shards": args.shards,
              **span.figures(len(datas))}
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
