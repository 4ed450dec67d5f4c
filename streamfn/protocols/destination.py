"""On-failure destinations: where a batch goes when a retry or age limit gives up on it.

A destination receives Lambda's failure record (condition, batch info, invoke count) plus,
beyond Lambda, the records themselves, so nothing is ever lost. ``send`` returns once the
record is durable; only then does the checkpoint move past the batch.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import msgspec

from ..records import Record

Condition = Literal["RetryAttemptsExhausted", "RecordAgeExceeded"]


class FailedBatch(msgspec.Struct, frozen=True):
    """A batch the failure policy gave up on, with why and after how many calls."""

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


@runtime_checkable
class Destination(Protocol):
    async def open(self) -> None: ...

    async def send(self, failure: FailedBatch) -> None:
        """Store ``failure`` durably; raise to have the engine retry (the shard waits)."""
        ...

    async def close(self) -> None: ...
