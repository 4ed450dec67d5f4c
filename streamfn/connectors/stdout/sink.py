"""Items printed as NDJSON on standard output: for trying a pipeline, not for keeping output."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, ClassVar

from ...paths import disk_errors_classified
from ...protocols.sink import SinkBatch, SinkConfig
from ..shared.ndjson import encode_ndjson

if TYPE_CHECKING:
    from ...components import BuildContext


class StdoutSinkConfig(SinkConfig, kw_only=True, tag="stdout"):
    """Print each item as one JSON line."""

    def build(self, ctx: BuildContext) -> StdoutSink:
        return StdoutSink()


class StdoutSink:
    """Items as JSON lines on standard output; not idempotent (a retried batch is printed again)."""

    keyed_by_batch: ClassVar[bool] = False

    async def open(self) -> None:
        return None

    async def write(self, batch: SinkBatch) -> None:
        """Raises ``SinkError`` for items JSON cannot hold, ``RetryableError(kind="storage")`` when
        standard output is a file on a full or read-only disk."""
        body = encode_ndjson(batch.items)
        out = sys.stdout.buffer
        with disk_errors_classified("standard output"):
            out.write(body)
            out.flush()

    async def close(self) -> None:
        return None
