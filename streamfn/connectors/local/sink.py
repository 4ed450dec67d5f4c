"""A folder laid out like an S3 bucket: one object per batch, written atomically."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ClassVar

import msgspec

from ...paths import make_output_folder, output_folder, write_atomically
from ...protocols.sink import SinkBatch, SinkConfig
from ..shared.keys import DEFAULT_TEMPLATE, check_template, render_key
from ..shared.ndjson import encode_ndjson

if TYPE_CHECKING:
    from ...components import BuildContext


class LocalSinkConfig(SinkConfig, kw_only=True, tag="local"):
    """Write each batch's items as NDJSON under ``path`` (relative to the config's folder)."""

    path: Annotated[str, msgspec.Meta(description=(
        "The folder objects are written under, relative to the config's folder."))]
    key: Annotated[str, msgspec.Meta(description=(
        "Key template of each object under path; the names are those of the S3 sink's key."))] = DEFAULT_TEMPLATE
    gzip: Annotated[bool, msgspec.Meta(description="Compress objects with gzip.")] = False
    fsync: Annotated[bool, msgspec.Meta(description=(
        "fsync each object and its folder before acknowledging (survives a power cut, not just a crash)."))] = True

    def build(self, ctx: BuildContext) -> LocalSink:
        check_template(self.key, "sinks.key")
        return LocalSink(output_folder(ctx.resolve(self.path)), key=self.key, compress=self.gzip, fsync=self.fsync)

    def check(self, pipeline: str, stream: str) -> None:
        check_template(self.key, "sinks.key", pipeline=pipeline, stream=stream)


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
        make_output_folder(self.root)

    async def write(self, batch: SinkBatch) -> None:
        """Raises ``SinkError`` for items JSON cannot hold or a key outside the root, and
        ``RetryableError(kind="storage")`` for a full or read-only disk."""
        body = encode_ndjson(batch.items)
        if self._compress:
            body = gzip.compress(body, mtime=0)
        await asyncio.to_thread(write_atomically, self.root, render_key(self._template, batch), body,
                                fsync=self._fsync)

    async def close(self) -> None:
        return None
