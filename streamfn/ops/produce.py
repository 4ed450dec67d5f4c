"""``streamfn produce``: append synthetic click events or NDJSON lines to a pipeline's local log.

Appends commit in chunks; on a failure (a full disk...) the error says how many records were
committed before it, so nothing is appended twice by accident. Afterwards the stream is trimmed
to the source's retention, so a log fed without a running daemon stays bounded too.
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from typing import BinaryIO

from ..config import LoadedPipeline
from ..connectors.local.log import LocalLog
from ..connectors.local.produce import ndjson_records, synthetic_clicks
from ..connectors.local.source import LocalSourceConfig
from ..errors import ConfigError, InputError, RetryableError

CHUNK = 5_000


def produce(
    loaded: LoadedPipeline,
    *,
    count: int | None,
    source_file: str | None,
    key_field: str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> int:
    """Append records to the pipeline's local log; returns how many were appended."""
    source = loaded.config.source
    if not isinstance(source, LocalSourceConfig):
        raise ConfigError("produce writes to the local log only; this pipeline reads another source",
                          file=str(loaded.path), field="source.type")
    if (count is None) == (source_file is None):
        raise ConfigError("give either --count (synthetic events) or --input (an NDJSON file)")
    ctx = loaded.context
    log = LocalLog(ctx.resolve(source.path) if source.path else ctx.state_dir / "log.sqlite3")
    try:
        log.create_stream(source.stream, source.shards)
        with ExitStack() as stack:
            if source_file is not None:
                stream: BinaryIO = sys.stdin.buffer if source_file == "-" else stack.enter_context(
                    open(source_file, "rb"))
                records: Iterable[tuple[str, bytes]] = ndjson_records(stream, key_field)
            else:
                records = synthetic_clicks(count or 0, seed)
            appended: list[int] = [0]
            try:
                done = _append_chunks(log, source.stream, records, total=count, progress=progress, done=appended)
            except ValueError as exc:
                raise InputError(
                    f"{source_file}: {exc}; stopped after appending the first {appended[0]:,} records"
                ) from None
            except RetryableError as exc:
                raise RetryableError(f"{exc}; stopped after appending the first {appended[0]:,} records (the"
                                     " others were not appended)", kind=exc.kind) from exc
        _trim(log, source)
        return done
    finally:
        log.close()


def _trim(log: LocalLog, source: LocalSourceConfig) -> None:
    """Trim to the retention; a failure only warns: the records are in, and a daemon trims too."""
    try:
        log.trim(source.stream, source.retention())
    except RetryableError as exc:
        logging.getLogger("streamfn.ops.produce").warning("%s", exc)  # a log line: JSON in --log-format json


def _append_chunks(
    log: LocalLog, stream: str, records: Iterable[tuple[str, bytes]], *, total: int | None, progress: bool,
    done: list[int],
) -> int:
    """Append in chunks of CHUNK records; ``done[0]`` counts what is committed, even on an error."""
    started = time.monotonic()
    # A redrawn bar only on a terminal, a summary line otherwise; the CLI passes progress=False in JSON mode.
    live = progress and sys.stderr.isatty()
    for chunk in _chunks(records, CHUNK):
        done[0] += log.append(stream, chunk)
        if live:
            _show_progress(done[0], total, time.monotonic() - started)
    if live:
        sys.stderr.write("\n")
    elif progress:
        elapsed = time.monotonic() - started
        sys.stderr.write(f"appended {done[0]:,} records to {stream!r} in {elapsed:.1f}s\n")
    return done[0]


def _chunks(records: Iterable[tuple[str, bytes]], size: int) -> Iterator[list[tuple[str, bytes]]]:
    iterator = iter(records)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _show_progress(done: int, total: int | None, elapsed: float) -> None:
    rate = done / elapsed if elapsed > 0 else 0.0
    if total:
        filled = int(30 * done / total)
        bar = "#" * filled + "-" * (30 - filled)
        sys.stderr.write(f"\r[{bar}] {done:,}/{total:,} records  {rate:,.0f}/s")
    else:
        sys.stderr.write(f"\r{done:,} records  {rate:,.0f}/s")
    sys.stderr.flush()
