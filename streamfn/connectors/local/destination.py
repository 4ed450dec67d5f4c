"""On-failure records as JSON files in a folder, one per disposed batch."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import msgspec
import orjson

from ...errors import SinkError
from ...paths import make_output_folder, output_folder, write_atomically
from ...protocols.destination import DestinationConfig, FailedBatch
from ..shared.failure_record import failure_key, failure_record

if TYPE_CHECKING:
    from ...components import BuildContext


class LocalDestinationConfig(DestinationConfig, kw_only=True, tag="local"):
    """Failure records under ``path``, keyed like Lambda's S3 destination but deterministically,
    so a batch disposed twice (a crash between disposal and checkpoint) is stored once."""

    path: Annotated[str, msgspec.Meta(description=(
        "The folder failure records are written under (one JSON file per batch), relative to the config's folder."))]

    def build(self, ctx: BuildContext) -> LocalDestination:
        return LocalDestination(output_folder(ctx.resolve(self.path)))

    def check(self, ctx: BuildContext) -> None:
        output_folder(ctx.resolve(self.path))


class LocalDestination:
    """Failure records at ``<root>/<failure_key>``, written atomically and durably."""

    def __init__(self, root: Path) -> None:
        self.root = root

    async def open(self) -> None:
        make_output_folder(self.root)

    async def send(self, failure: FailedBatch) -> None:
        """Raises ``SinkError`` for a key outside the root (a crafted shard id) or a record that
        cannot be encoded, and ``RetryableError(kind="storage")`` for a full or read-only disk."""
        try:
            body = orjson.dumps(failure_record(failure, with_payload=True), option=orjson.OPT_INDENT_2)
        except TypeError as exc:
            raise SinkError(f"failure record of shard {failure.shard_id!r} cannot be encoded: {exc}") from None
        await asyncio.to_thread(write_atomically, self.root, failure_key(failure), body)

    async def close(self) -> None:
        return None
