"""``streamfn tail``: print a pipeline's source records as they arrive, without touching its checkpoints."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import orjson

from ..config import LoadedPipeline
from ..protocols.source import ShardInfo, Source, StartingPosition
from ..records import Record
from .parts import build_source, parse_moment
from .standalone import start_feeding, stop_feeding

#: How long one read may wait for records; short so that ``--count`` and Ctrl-C end promptly.
READ_WAIT = 0.5
READ_MAX = 500


def starting_position(text: str) -> StartingPosition:
    """``latest`` (default), ``trim_horizon``, or a time (epoch seconds or ISO 8601)."""
    if text in ("latest", "trim_horizon"):
        return StartingPosition(text)  # type: ignore[arg-type]
    return StartingPosition("at_timestamp", parse_moment(text))


def format_text(record: Record) -> str:
    data = record.data.decode("utf-8", errors="backslashreplace")
    return f"{record.shard_id}  {record.identifier}  {record.partition_key}  {data}"


def format_json(record: Record) -> str:
    try:
        data: Any = orjson.loads(record.data)
    except orjson.JSONDecodeError:
        data = record.data.decode("utf-8", errors="backslashreplace")
    return orjson.dumps({
        "shard": record.shard_id, "sequence": record.identifier, "partition_key": record.partition_key,
        "arrival_time": record.arrival_time, "data": data,
    }).decode()


class Printer:
    """Writes records as lines and says when ``limit`` lines have been written."""

    def __init__(self, out: TextIO, fmt: Callable[[Record], str], limit: int | None) -> None:
        self.out, self.fmt, self.limit = out, fmt, limit
        self.printed = 0
        self.done = asyncio.Event()

    def emit(self, records: Sequence[Record]) -> None:
        for record in records:
            if self.done.is_set():
                return
            self.out.write(self.fmt(record) + "\n")
            self.printed += 1
            if self.limit is not None and self.printed >= self.limit:
                self.done.set()
        self.out.flush()


async def tail(
    loaded: LoadedPipeline, *, start: StartingPosition, shards: Sequence[str] = (), limit: int | None = None,
    as_json: bool = False, out: TextIO = sys.stdout,
) -> int:
    """Follow every shard (or ``shards``) until interrupted or ``limit`` records were printed."""
    source = build_source(loaded)
    await source.open()
    printer = Printer(out, format_json if as_json else format_text, limit)
    try:
        listed = await source.list_shards()
        chosen = [s for s in listed if not shards or s.shard_id in shards]
        feeding = await start_feeding(source, chosen)
        tasks = [asyncio.create_task(_follow(source, shard, start, printer)) for shard in chosen]
        waiter = asyncio.create_task(printer.done.wait())
        try:
            done, _ = await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not waiter and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            if not printer.done.is_set():  # every shard ended before the limit
                await asyncio.gather(*tasks)
        finally:
            for task in (*tasks, waiter):
                task.cancel()
            await asyncio.gather(*tasks, waiter, return_exceptions=True)
            await stop_feeding(feeding)
    finally:
        await source.close()
    return printer.printed


async def _follow(source: Source, shard: ShardInfo, start: StartingPosition, printer: Printer) -> None:
    reader = source.reader(shard, None, start)
    try:
        while True:
            result = await reader.read(READ_MAX, READ_WAIT)
            printer.emit(result.records)
            if result.shard_end:
                return
    finally:
        await reader.close()
