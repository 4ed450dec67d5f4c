"""Bytewax over the same prepared log: ``flat_map_batch`` decoding each batch, in a fresh process.

A Bytewax ``FixedPartitionedSource`` with one partition per shard reads the log through
``LocalLog.read`` (the same reads streamfn makes) in batches of ``--batch``; ``flat_map_batch``
decodes each batch with ``orjson.loads``; a sink counts the items. One worker (``run_main``),
timed from the start of the flow to its end. Exit 77 when Bytewax is not installed
(``pip install -e '.[bench]'``).

``python -m benchmarks.bytewax_flow --log L --shards S --batch B`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from streamfn.connectors.local.log import LocalLog, shard_id_of

from .common import SKIPPED, STREAM, Span


def build_flow(log: LocalLog, shards: int, batch: int, counted: list[int]) -> Any:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
    from bytewax.outputs import DynamicSink, StatelessSinkPartition

    class ShardPartition(StatefulSourcePartition[bytes, int]):
        def __init__(self, shard_id: str, after: int) -> None:
            self._shard_id = shard_id
            self._after = after

        def next_batch(self) -> list[bytes]:
            records = log.read(STREAM, self._shard_id, self._after, batch)
            if not records:
                raise StopIteration
            self._after = records[-1].sequence
            return [r.data for r in records]

        def snapshot(self) -> int:
            return self._after

    class LogSource(FixedPartitionedSource[bytes, int]):
        def list_parts(self) -> list[str]:
            return [shard_id_of(i) for i in range(shards)]

        def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> ShardPartition:
            return ShardPartition(for_part, resume_state or 0)

    class CountPartition(StatelessSinkPartition[Any]):
        def write_batch(self, items: list[Any]) -> None:
            counted[0] += len(items)

    class CountSink(DynamicSink[Any]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> CountPartition:
            return CountPartition()

    loads = orjson.loads
    flow = Dataflow("bench")
    datas = op.input("log", flow, LogSource())
    decoded = op.flat_map_batch("decode", datas, lambda items: [loads(item) for item in items])
    op.output("count", decoded, CountSink())
    return flow


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--shards", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        from bytewax.testing import run_main
    except ImportError:
        print("bytewax is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return SKIPPED
    log = LocalLog(args.log)
    counted = [0]
    try:
        flow = build_flow(log, args.shards, args.batch, counted)
        with Span() as span:
            run_main(flow)
    finally:
        log.close()
    result = {"contender": "bytewax", "scenario": f"bytewax batch={args.batch} shards={args.shards}",
              "handler": "json", "batch": args.batch, "shards": args.shards, **span.figures(counted[0])}
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
