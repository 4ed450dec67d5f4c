"""``streamfn tail --output``: print what the handler returned, as the pipeline's sinks wrote it.

Reads the objects the local and S3 sinks write (new ones as they appear, or since a time); only
reads, so it shows exactly what downstream readers see, whichever process wrote it. An object
that is overwritten (a replay, a batch formed again after a crash) is printed again. S3 is listed
under the key template's fixed prefix at each look: cheap for a pipeline's own prefix, not for a
bucket of millions of objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, TextIO

import orjson

from ..aws import AWS_DEFAULTS, AwsSettings
from ..config import LoadedPipeline
from ..connectors.local.sink import LocalSinkConfig
from ..connectors.s3.sink import S3_SINK_TIMEOUT, S3SinkConfig
from ..errors import ConfigError, SinkError
from ..protocols.source import StartingPosition

#: Seconds between looks for new objects.
POLL = 0.5


class ObjectFolder(Protocol):
    """Where one sink's objects are: list them with a version and a time, read one."""

    name: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def listing(self) -> dict[str, tuple[str, float]]:
        """``key -> (version, written at in epoch seconds)`` for every finished object."""
        ...

    async def read(self, key: str) -> bytes | None:
        """The object's bytes, None if it went away since the listing."""
        ...


class LocalFolder:
    """A local sink's folder (its temporary ``.tmp-*`` files are not objects yet)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = str(root)

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def listing(self) -> dict[str, tuple[str, float]]:
        if not self.root.is_dir():
            return {}
        found = {}
        for path in self.root.rglob("*"):
            if path.name.startswith("."):
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if path.is_file():
                found[str(path.relative_to(self.root))] = (str(stat.st_mtime_ns), stat.st_mtime)
        return found

    async def read(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None


class S3Folder:
    """An S3 sink's objects under its key template's fixed prefix."""

    def __init__(self, config: S3SinkConfig, aws: AwsSettings = AWS_DEFAULTS) -> None:
        self.config = config
        self.prefix = config.key.split("{", 1)[0]
        self.name = f"s3://{config.bucket}/{self.prefix}"
        self.aws = aws.under(region=config.region, endpoint_url=config.endpoint_url,
                             request_timeout=config.request_timeout).client("s3", default_timeout=S3_SINK_TIMEOUT)

    async def open(self) -> None:
        await self.aws.open()

    async def close(self) -> None:
        await self.aws.close()

    async def listing(self) -> dict[str, tuple[str, float]]:
        found: dict[str, tuple[str, float]] = {}
        token: dict[str, str] = {}
        while True:
            page = await self.aws.call("list_objects_v2", SinkError, Bucket=self.config.bucket, Prefix=self.prefix,
                                       **token)
            for entry in page.get("Contents", ()):
                found[entry["Key"]] = (f"{entry['ETag']}@{entry['LastModified'].isoformat()}",
                                       entry["LastModified"].timestamp())
            if not page.get("IsTruncated"):
                return found
            token = {"ContinuationToken": page["NextContinuationToken"]}

    async def read(self, key: str) -> bytes | None:
        from ..aws import error_code

        try:
            answer = await self.aws.call("get_object", SinkError, Bucket=self.config.bucket, Key=key)
        except SinkError as exc:
            if error_code(exc.__cause__ or exc) == "NoSuchKey":
                return None
            raise
        async with answer["Body"] as body:
            data: bytes = await body.read()
        return data


def folders(loaded: LoadedPipeline) -> list[ObjectFolder]:
    """One per local or S3 sink; a pipeline with neither is refused, naming why."""
    found: list[ObjectFolder] = []
    for sink in loaded.config.sinks:
        if isinstance(sink, LocalSinkConfig):
            found.append(LocalFolder(loaded.context.resolve(sink.path)))
        elif isinstance(sink, S3SinkConfig):
            found.append(S3Folder(sink, loaded.config.aws))
    if not found:
        raise ConfigError("tail --output reads the objects local and S3 sinks write, and this pipeline has neither",
                          file=str(loaded.path), field="sinks")
    return found


def lines_of(key: str, data: bytes) -> Iterator[bytes]:
    if key.endswith(".gz"):
        with contextlib.suppress(gzip.BadGzipFile, EOFError):  # not compressed after all: shown as it is
            data = gzip.decompress(data)
    return iter(line for line in data.splitlines() if line)


def format_item(key: str, line: bytes, *, as_json: bool) -> str:
    if not as_json:
        return f"{key}  {line.decode('utf-8', errors='backslashreplace')}"
    try:
        item: Any = orjson.loads(line)
    except orjson.JSONDecodeError:
        item = line.decode("utf-8", errors="backslashreplace")
    return orjson.dumps({"object": key, "item": item}).decode()


async def tail_output(loaded: LoadedPipeline, *, start: StartingPosition, limit: int | None = None,
                      as_json: bool = False, out: TextIO) -> int:
    """Print each item of each new object (oldest first) until interrupted or ``limit`` items."""
    places = folders(loaded)
    for place in places:
        await place.open()
    try:
        seen = [await _already_seen(place, start) for place in places]
        printed = 0
        while True:
            for place, known in zip(places, seen, strict=True):
                listing = await place.listing()
                fresh = sorted((when, key) for key, (version, when) in listing.items() if known.get(key) != version)
                for _, key in fresh:
                    known[key] = listing[key][0]
                    data = await place.read(key)
                    for line in lines_of(key, data or b""):
                        out.write(format_item(key, line, as_json=as_json) + "\n")
                        printed += 1
                        if limit is not None and printed >= limit:
                            out.flush()
                            return printed
            out.flush()
            await asyncio.sleep(POLL)
    finally:
        for place in places:
            await place.close()


async def _already_seen(place: ObjectFolder, start: StartingPosition) -> dict[str, str]:
    """The objects not to print: all that exist (``latest``), those written before the time, or none."""
    if start.kind == "trim_horizon":
        return {}
    listing = await place.listing()
    cutoff = float("inf") if start.kind == "latest" else (start.timestamp or 0.0)
    return {key: version for key, (version, when) in listing.items() if when < cutoff}
