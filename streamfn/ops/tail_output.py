"""``streamfn tail --output``: print what the handler returned, as the pipeline's sinks wrote it.

Reads the objects the local sinks write (new ones as they appear, or since a time); only reads,
so it shows exactly what downstream readers see, whichever process wrote it. An object that is
overwritten (a replay, a batch formed again after a crash) is printed again.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import orjson

from ..config import LoadedPipeline
from ..errors import ConfigError
from ..sinks.local import LocalSinkConfig
from ..sources.base import StartingPosition

#: Seconds between looks for new objects.
POLL = 0.5


def sink_roots(loaded: LoadedPipeline) -> list[Path]:
    """The folders of the pipeline's local sinks; a pipeline without one is refused, naming why."""
    roots = [loaded.context.resolve(sink.path) for sink in loaded.config.sinks if isinstance(sink, LocalSinkConfig)]
    if not roots:
        raise ConfigError("tail --output reads what local sinks wrote, and this pipeline has none (other sinks: "
                          "read them with their own tools, e.g. `aws s3 ls`)", file=str(loaded.path), field="sinks")
    return roots


def objects(root: Path) -> dict[Path, int]:
    """Every finished object under ``root`` with its modification time (ns); temporary files excluded."""
    if not root.is_dir():
        return {}
    found = {}
    for path in root.rglob("*"):
        if path.name.startswith("."):
            continue  # the sink's temporary files (.tmp-*) until they are renamed into place
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        if path.is_file():
            found[path] = stat.st_mtime_ns
    return found


def items(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return iter(line for line in data.splitlines() if line)


def format_item(root: Path, path: Path, line: bytes, *, as_json: bool) -> str:
    key = str(path.relative_to(root))
    if not as_json:
        return f"{key}  {line.decode('utf-8', errors='backslashreplace')}"
    try:
        item: Any = orjson.loads(line)
    except orjson.JSONDecodeError:
        item = line.decode("utf-8", errors="backslashreplace")
    return orjson.dumps({"object": key, "item": item}).decode()


def tail_output(loaded: LoadedPipeline, *, start: StartingPosition, limit: int | None = None,
                as_json: bool = False, out: TextIO, sleep: Callable[[float], None] = time.sleep) -> int:
    """Print each item of each new object (oldest first) until interrupted or ``limit`` items."""
    roots = sink_roots(loaded)
    seen: dict[Path, int] = {}
    if start.kind == "latest":
        for root in roots:
            seen.update(objects(root))
    elif start.kind == "at_timestamp":
        assert start.timestamp is not None
        cutoff = int(start.timestamp * 1e9)
        for root in roots:
            seen.update({p: m for p, m in objects(root).items() if m < cutoff})
    printed = 0
    while True:
        fresh = sorted(((m, root, p) for root in roots for p, m in objects(root).items() if seen.get(p) != m),
                       key=lambda entry: (entry[0], str(entry[2])))
        for mtime, root, path in fresh:
            seen[path] = mtime
            try:
                lines = list(items(path))
            except (FileNotFoundError, gzip.BadGzipFile, EOFError):
                continue  # replaced or removed between the listing and the read: the next look sees it
            for line in lines:
                out.write(format_item(root, path, line, as_json=as_json) + "\n")
                printed += 1
                if limit is not None and printed >= limit:
                    out.flush()
                    return printed
        out.flush()
        sleep(POLL)
