"""On-failure records appended to a stream of the local log."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import msgspec

from ...protocols.destination import DestinationConfig, FailedBatch
from ..shared.failure_documents import failure_documents
from .source import LOG_FILE, LocalSourceConfig

if TYPE_CHECKING:
    from ...components import BuildContext
    from ...protocols.source import SourceConfig
    from .log import LocalLog


class LocalLogDestinationConfig(DestinationConfig, kw_only=True, tag="local_log"):
    """Failure records appended to a stream of the local log (created with ``shards`` if missing)."""

    stream: Annotated[str, msgspec.Meta(description=(
        "The local-log stream failure records are appended to (not the pipeline's own source)."))]
    shards: Annotated[int, msgspec.Meta(description="Shards of that stream when it is created.")] = 1
    path: Annotated[str | None, msgspec.Meta(description=(
        "The log file; default: the pipeline's own `<state_dir>/log.sqlite3`."))] = None

    def build(self, ctx: BuildContext) -> LocalLogDestination:
        path = ctx.resolve(self.path) if self.path else ctx.state_dir / "log.sqlite3"
        return LocalLogDestination(path, self.stream, self.shards)

    def feeds(self, source: SourceConfig, ctx: BuildContext) -> str | None:
        if not isinstance(source, LocalSourceConfig) or source.stream != self.stream:
            return None

        def log_file(file: Path) -> str:
            return os.path.abspath(file / LOG_FILE if file.is_dir() else file)

        mine = ctx.resolve(self.path) if self.path else ctx.state_dir / LOG_FILE
        return "stream" if log_file(source.log_path(ctx)) == log_file(mine) else None


class LocalLogDestination:
    def __init__(self, path: Path, stream: str, shards: int) -> None:

        self._path, self._stream, self._shards = path, stream, shards
        self._log: LocalLog | None = None

    async def open(self) -> None:
        from .log import LocalLog

        self._log = LocalLog(self._path)
        self._log.create_stream(self._stream, self._shards)

    async def send(self, failure: FailedBatch) -> None:
        assert self._log is not None
        log, stream = self._log, self._stream
        documents = [(failure.shard_id, doc) for doc in failure_documents(failure)]
        await asyncio.to_thread(log.append, stream, documents)

    async def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
