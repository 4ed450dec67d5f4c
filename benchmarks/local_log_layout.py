"""Micro-benchmark of the local log's block layout and of direct vs threaded reads.

Run: ``.venv/bin/python benchmarks/local_log_layout.py [records]``. Prints
1. append throughput, and the cost per record of reading a whole shard in batches of 1000
   against a plain list comprehension building the same Record objects;
2. for several read sizes, the time of one read called directly on the event loop vs through
   ``asyncio.to_thread``, and the throughput of four shard readers running concurrently each way.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from streamfn.connectors.local.log import LocalLog
from streamfn.records import Record

DATA = b'{"event":"click","user_id":"user-000123","page":"/checkout"}'.ljust(250, b" ")


def fill(log: LocalLog, stream: str, shards: int, records: int) -> float:
    log.create_stream(stream, shards)
    start = time.perf_counter()
    for n in range(0, records, 1000):
        log.append(stream, ((f"user-{i % 5000}", DATA) for i in range(n, min(records, n + 1000))))
    return records / (time.perf_counter() - start)


def read_cost(log: LocalLog, records: int) -> None:
    rate = fill(log, "one", 1, records)
    start = time.perf_counter()
    after = total = 0
    while batch := log.read("one", "shard-0000", after, 1000):
        after = batch[-1].sequence
        total += len(batch)
    read_s = time.perf_counter() - start
    keys = [f"user-{i % 5000}" for i in range(1000)]
    datas = [DATA] * 1000
    start = time.perf_counter()
    for b in range(total // 1000):
        _ = [Record("shard-0000", b * 1000 + i, keys[i], datas[i], 1.0) for i in range(1000)]
    build_s = time.perf_counter() - start
    print(f"append: {rate:,.0f} records/s")
    print(
        f"read {total:,} records: {total / read_s:,.0f} records/s, {read_s / total * 1e9:.0f} ns/record; "
        f"list comprehension alone {build_s / total * 1e9:.0f} ns/record; "
        f"read overhead {(read_s - build_s) / total * 1e9:.0f} ns/record"
    )


async def one_read(log: LocalLog, size: int, threaded: bool, repeats: int = 200) -> float:
    start = time.perf_counter()
    for i in range(repeats):
        after = (i * size) % 50_000
        if threaded:
            await asyncio.to_thread(log.read, "four", "shard-0000", after, size)
        else:
            log.read("four", "shard-0000", after, size)
    return (time.perf_counter() - start) / repeats * 1e6


async def concurrent_readers(log: LocalLog, size: int, threaded: bool, seconds: float = 0.5) -> float:
    async def run(shard: str) -> int:
        after = count = 0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            if threaded:
                batch = await asyncio.to_thread(log.read, "four", shard, after, size)
            else:
                batch = log.read("four", shard, after, size)
                await asyncio.sleep(0)
            after = batch[-1].sequence if batch else 0
            count += len(batch)
        return count

    counts = await asyncio.gather(*(run(s) for s in log.shard_ids("four")))
    return sum(counts) / seconds


async def direct_vs_thread(log: LocalLog) -> None:
    fill(log, "four", 4, 400_000)
    for shard in log.shard_ids("four"):  # warm the page cache and mmap so neither side pays it
        log.read("four", shard, 0, 10**6)
    print("read size | one read direct / threaded (us) | 4 readers direct / threaded (records/s)")
    for size in (1, 10, 100, 500, 1000, 5000):
        d1, t1 = await one_read(log, size, False), await one_read(log, size, True)
        d4, t4 = await concurrent_readers(log, size, False), await concurrent_readers(log, size, True)
        print(f"{size:9} | {d1:10.1f} / {t1:10.1f} | {d4:14,.0f} / {t4:14,.0f}")


def main() -> None:
    records = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        log = LocalLog(Path(tmp) / "log.sqlite3")
        read_cost(log, records)
        asyncio.run(direct_vs_thread(log))
        log.close()


if __name__ == "__main__":
    main()
