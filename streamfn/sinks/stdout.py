"""Items printed as NDJSON on standard output: for trying a pipeline, not for keeping output."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, ClassVar

import msgspec

from .base import SinkBatch
from .local import encode_ndjson

if TYPE_CHECKING:
    from ..components import BuildContext


class StdoutSinkConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type", tag="stdout"):
    """Print each item as one JSON line."""

    def build(self, ctx: BuildContext) -> StdoutSink:
        return StdoutSink()


class StdoutSink:
    keyed_by_batch: ClassVar[bool] = False

    async def open(self) -> None:
        return None

    async def write(self, batch: SinkBatch) -> None:
        out = sys.stdout.buffer
        out.write(encode_ndjson(batch.items))
        out.flush()

    async def close(self) -> None:
        return None
