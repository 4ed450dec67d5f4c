"""The shard loop's decisions, as pure functions: what a call's outcome means for its batch, and what
a failed write means for the shard.

The loop in ``shard.py`` performs them. Keeping them here, free of I/O, is what lets the property
tests drive every combination of failure controls (partial failures, bisect, attempts, record age,
windows) through random failure patterns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import orjson

from ..errors import LeaseLostError, RetryableError, SinkError
from ..protocols.destination import Condition
from ..records import Position, Record
from ..storage_errors import STORAGE_ERRNOS
from .policy import FailurePolicy


class Segment(NamedTuple):
    """Consecutive records of one batch still to handle, with the retries they have used."""

    records: Sequence[Record]
    attempts: int = 0


class Succeeded(NamedTuple):
    """The call handled every record of its segment; ``items`` go to the sinks."""

    items: list[Any]
    state: Any = None


class PartlyFailed(NamedTuple):
    """The handler reported records failed (``report_batch_item_failures``): every record before
    ``failed_at`` is done and produced ``items``; the rest must run again."""

    failed_at: Position
    items: list[Any]
    state: Any = None


class Failed(NamedTuple):
    """The call failed as a whole: an exception, a timeout, a bad answer, or output the sinks refused.

    ``function_error`` is false for a bad answer (Lambda's ``functionError`` is then null).
    """

    error: str
    function_error: bool = True


Outcome = Succeeded | PartlyFailed | Failed


class Done(NamedTuple):
    """These records are handled; their output joins the batch's output."""

    records: Sequence[Record]
    items: list[Any]
    state: Any = None


class Retry(NamedTuple):
    """Run these segments next, in this order; ``backoff`` says whether to wait first (a split
    retries at once: it is a new question, not the same one asked again)."""

    segments: tuple[Segment, ...]
    backoff: bool


class Dispose(NamedTuple):
    """Give up on these records: send them to the on-failure destination with their metadata."""

    records: Sequence[Record]
    condition: Condition
    invoke_count: int
    error: str | None
    function_error: bool = True


Step = Done | Retry | Dispose


def after_call(segment: Segment, outcome: Outcome, policy: FailurePolicy) -> list[Step]:
    """What follows a call on ``segment``: the steps to perform, in order.

    - success: the segment is done;
    - partial failure: the records before the lowest failed one are done, the rest retries (one
      attempt used) or, past ``max_attempts``, is disposed of;
    - failure: with ``bisect_on_error`` a segment of two or more records splits in halves (no attempt
      used); otherwise it retries with one more attempt, or is disposed of past ``max_attempts``.
    """
    records = segment.records
    if isinstance(outcome, Succeeded):
        return [Done(records, outcome.items, outcome.state)]
    if isinstance(outcome, PartlyFailed):
        cut = next((i for i, r in enumerate(records) if r.position >= outcome.failed_at), len(records))
        steps: list[Step] = []
        if cut:
            steps.append(Done(records[:cut], outcome.items, outcome.state))
        rest = records[cut:]
        if rest:
            steps.append(_again(Segment(rest, segment.attempts), "partial batch failure", policy, function_error=False))
        return steps
    if policy.bisect_on_error and len(records) > 1:
        middle = len(records) // 2
        return [Retry((Segment(records[:middle], segment.attempts), Segment(records[middle:], segment.attempts)),
                      backoff=False)]
    return [_again(segment, outcome.error, policy, function_error=outcome.function_error)]


def _again(segment: Segment, error: str, policy: FailurePolicy, *, function_error: bool) -> Step:
    attempts = segment.attempts + 1
    if policy.attempts_exhausted(attempts):
        return Dispose(segment.records, "RetryAttemptsExhausted", attempts, error, function_error)
    return Retry((Segment(segment.records, attempts),), backoff=True)


def expire(segment: Segment, policy: FailurePolicy, now: float | None = None) -> tuple[Dispose | None, Segment | None]:
    """Records past ``max_record_age`` leave before the call; the rest (if any) still runs."""
    expired, fresh = policy.split_expired(segment.records, now)
    if not expired:
        return None, segment
    disposal = Dispose(expired, "RecordAgeExceeded", segment.attempts, None, function_error=False)
    return disposal, (Segment(fresh, segment.attempts) if fresh else None)


# -- writes -----------------------------------------------------------------------------------------

WriteAction = Literal["retry", "fail_batch", "stop"]

class WriteFailure(NamedTuple):
    """What to do after a sink, store or destination write failed, and the cause's kind (for metrics)."""

    action: WriteAction
    kind: str


def classify_write_error(exc: BaseException) -> WriteFailure:
    """By what to do, never by message text:

    - a lost lease stops the shard at once;
    - output a sink cannot take as it is (``SinkError``, an unencodable value) fails the batch;
    - everything else is retried with backoff while the shard shows as blocked: throttling,
      timeouts, connection errors, a full disk, and errors nobody classified (retrying an unknown
      failure never loses a record; disposing of records because of it could).
    """
    if isinstance(exc, LeaseLostError):
        return WriteFailure("stop", "lease_lost")
    if isinstance(exc, RetryableError):
        return WriteFailure("retry", exc.kind)
    if isinstance(exc, (SinkError, orjson.JSONEncodeError)):
        return WriteFailure("fail_batch", "rejected")
    if isinstance(exc, TimeoutError):
        return WriteFailure("retry", "timeout")
    if isinstance(exc, ConnectionError):
        return WriteFailure("retry", "connection")
    if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
        return WriteFailure("retry", "storage")
    return WriteFailure("retry", "other")
