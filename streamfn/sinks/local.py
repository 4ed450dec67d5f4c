"""A folder laid out like an S3 bucket: one object per batch, written atomically."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec
import orjson

from .base import SinkBatch
from .keys import DEFAULT_TEMPLATE, check_template, render_key

if TYPE_CHECKING:
    from ..components import BuildContext


class LocalSinkConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type", tag="local"):
    """Write each batch's items as NDJSON under ``path`` (relative to the config's folder)."""

    path: str
    key: str = DEFAULT_TEMPLATE
    gzip: bool = False
    #: fsync each object and its folder before acknowledging (survives a power cut, not just a crash).
    fsync: bool = True

    def build(self, ctx: BuildContext) -> LocalSink:
        check_template(self.key, "sinks.key")
        return LocalSink(ctx.resolve(self.path), key=self.key, compress=self.gzip, fsync=self.fsync)


def encode_ndjson(items: list[Any]) -> bytes:
    """One JSON document per line; bytes items are written as they are."""
    dumps = orjson.dumps
    try:
        return b"".join(
            (item if item.endswith(b"\n") else item + b"\n") if isinstance(item, bytes)
            else dumps(item, option=orjson.OPT_APPEND_NEWLINE)
            for item in items
        )
    except TypeError:
        # orjson stops at integers beyond 64 bits (a Kinesis sequence number is ~2**185); the
        # standard library writes them, and anything else it cannot encode fails as before.
        return b"".join(
            (item if item.endswith(b"\n") else item + b"\n") if isinstance(item, bytes)
            else json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
            for item in items
        )


class LocalSink:
    """Objects at ``<root>/<key>``: temp file + rename, so a reader never sees half an object
    and a replayed batch replaces its own object instead of adding a second one."""

    keyed_by_batch: ClassVar[bool] = True

    def __init__(self, root: Path, *, key: str = DEFAULT_TEMPLATE, compress: bool = False, fsync: bool = True) -> None:
        self.root = root
        self._template = key + (".gz" if compress and not key.endswith(".gz") else "")
        self._compress = compress
        self._fsync = fsync

    async def open(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    async def write(self, batch: SinkBatch) -> None:
        body = encode_ndjson(batch.items)
        if self._compress:
            body = gzip.compress(body, mtime=0)
        await asyncio.to_thread(self._put, render_key(self._template, batch), body)

    def _put(self, key: str, body: bytes) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(body)
                if self._fsync:
                    out.flush()
                    os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if self._fsync:
            dir_fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    async def close(self) -> None:
        return None
