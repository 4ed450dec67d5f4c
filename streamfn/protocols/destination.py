"""On-failure destinations: where a batch goes when a retry or age limit gives up on it.

A destination receives Lambda's failure record (condition, batch info, invoke count) plus,
beyond Lambda, the records themselves, so nothing is ever lost. ``send`` returns once the
record is durable; only then does the checkpoint move past the batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import msgspec

from ..records import Record

if TYPE_CHECKING:
    from ..components import BuildContext
    from .source import SourceConfig

Condition = Literal["RetryAttemptsExhausted", "RecordAgeExceeded"]


class FailedBatch(msgspec.Struct, frozen=True):
    """A batch the failure policy gave up on, with why and after how many calls.

    ``batch_info_key`` and ``stream_arn`` come from the source (Lambda's ``KinesisBatchInfo`` or
    ``DDBStreamBatchInfo``, the stream's ARN); ``function_arn`` names the pipeline as a function.
    ``payload`` is the event the handler was called with, for destinations that keep it (S3, local).
    """

    pipeline: str
    stream: str
    source_kind: str
    shard_id: str
    condition: Condition
    records: list[Record]
    invoke_count: int
    error: str | None = None
    function_error: bool = True
    failed_at: float = 0.0
    batch_info_key: str = "KinesisBatchInfo"
    stream_arn: str = ""
    function_arn: str = ""
    payload: dict[str, Any] | None = None


@runtime_checkable
class Destination(Protocol):
    async def open(self) -> None: ...

    async def send(self, failure: FailedBatch) -> None:
        """Store ``failure`` durably; raise to have the engine retry (the shard waits)."""
        ...

    async def close(self) -> None: ...


class DestinationConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    """A destination's config: its subclass sets ``tag`` (the ``type`` in pipeline files)."""

    def build(self, ctx: BuildContext) -> Destination:
        raise NotImplementedError

    def problems(self) -> list[tuple[str, str | None]]:
        """``(field, why)`` for settings of this config that cannot work, fields relative to it."""
        return []

    def check(self, ctx: BuildContext) -> None:
        """Checks that need the config's folder (a path that cannot be written under): raise
        ConfigError with the field relative to this config. Run when the config loads."""
        return None

    def feeds(self, source: SourceConfig, ctx: BuildContext) -> str | None:
        """The field naming the stream when this destination writes into ``source``'s own stream
        (failure records would be read back and fail again, forever); None otherwise."""
        return None
