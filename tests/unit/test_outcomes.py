"""The shard loop's pure decisions: what follows a call, and what a failed write means."""

from __future__ import annotations

import errno

import orjson
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from streamfn import Position, Record
from streamfn.engine.outcomes import (
    Dispose,
    Done,
    Failed,
    PartlyFailed,
    Retry,
    Segment,
    Succeeded,
    after_call,
    classify_write_error,
    expire,
)
from streamfn.engine.policy import FailurePolicy
from streamfn.errors import LeaseLostError, RetryableError, SinkError


def records(n: int, start: int = 1) -> list[Record]:
    return [Record("s", seq, "k", b"{}", float(seq)) for seq in range(start, start + n)]


outcomes = st.one_of(
    st.just(Succeeded([])),
    st.just(Failed("boom")),
    st.integers(1, 12).map(lambda k: PartlyFailed(Position(k), [])),
)
policies = st.builds(FailurePolicy, max_attempts=st.sampled_from([-1, 0, 1, 3]), bisect_on_error=st.booleans())


@given(n=st.integers(1, 10), attempts=st.integers(0, 4), outcome=outcomes, policy=policies)
def test_steps_account_for_every_record_once_in_order(n: int, attempts: int, outcome: object,
                                                      policy: FailurePolicy) -> None:
    assume(not policy.attempts_exhausted(attempts))  # a segment past its limit was disposed of already
    segment = Segment(records(n), attempts)
    steps = after_call(segment, outcome, policy)  # type: ignore[arg-type]
    covered: list[Record] = []
    for step in steps:
        if isinstance(step, Retry):
            for part in step.segments:
                covered.extend(part.records)
                # a split uses no attempt; a retry of the same records uses exactly one
                assert part.attempts == (attempts if not step.backoff else attempts + 1)
                assert not policy.attempts_exhausted(part.attempts)
        else:
            covered.extend(step.records)
        if isinstance(step, Dispose):
            assert policy.attempts_exhausted(step.invoke_count)
    assert covered == segment.records, "each record is done, retried or disposed of: once, in shard order"


def test_success_is_done() -> None:
    assert after_call(Segment(records(3)), Succeeded(["x"]), FailurePolicy()) == [Done(records(3), ["x"])]


def test_partial_failure_keeps_what_came_before_and_retries_the_rest() -> None:
    steps = after_call(Segment(records(5), 1), PartlyFailed(Position(3), ["a", "b"]), FailurePolicy())
    assert steps == [Done(records(2), ["a", "b"]), Retry((Segment(records(3, start=3), 2),), backoff=True)]


def test_partial_failure_past_max_attempts_disposes_of_the_rest_only() -> None:
    steps = after_call(Segment(records(4), 0), PartlyFailed(Position(2), ["a"]), FailurePolicy(max_attempts=0))
    assert steps == [Done(records(1), ["a"]),
                     Dispose(records(3, start=2), "RetryAttemptsExhausted", 1, "partial batch failure", False)]


def test_bisect_splits_without_using_an_attempt_until_one_record_is_left() -> None:
    policy = FailurePolicy(bisect_on_error=True, max_attempts=0)
    assert after_call(Segment(records(5), 0), Failed("x"), policy) == [
        Retry((Segment(records(2), 0), Segment(records(3, start=3), 0)), backoff=False)]
    assert after_call(Segment(records(1), 0), Failed("x"), policy) == [
        Dispose(records(1), "RetryAttemptsExhausted", 1, "x", True)]


def test_retry_until_success_by_default() -> None:
    steps = after_call(Segment(records(2), 41), Failed("x"), FailurePolicy())
    assert steps == [Retry((Segment(records(2), 42),), backoff=True)]


def test_expired_records_leave_before_the_call() -> None:
    policy = FailurePolicy(max_record_age=60)
    batch = records(4)
    disposal, fresh = expire(Segment(batch, 2), policy, now=63.5)  # records 1-3 arrived over 60 s before
    assert disposal == Dispose(batch[:3], "RecordAgeExceeded", 2, None, False)
    assert fresh == Segment(batch[3:], 2)
    assert expire(Segment(batch), policy, now=10.0) == (None, Segment(batch))


@pytest.mark.parametrize(("error", "action", "kind"), [
    (LeaseLostError("gone"), "stop", "lease_lost"),
    (RetryableError("slow down", kind="throttled"), "retry", "throttled"),
    (SinkError("cannot encode"), "fail_batch", "rejected"),
    (orjson.JSONEncodeError("Type is not JSON serializable: decimal.Decimal"), "fail_batch", "rejected"),
    (TimeoutError(), "retry", "timeout"),
    (ConnectionRefusedError(), "retry", "connection"),
    (OSError(errno.ENOSPC, "No space left on device"), "retry", "storage"),
    (OSError(errno.EROFS, "Read-only file system"), "retry", "storage"),
    (KeyError("a bug nobody classified"), "retry", "other"),
])
def test_write_errors_are_classified_by_what_to_do(error: Exception, action: str, kind: str) -> None:
    failure = classify_write_error(error)
    assert (failure.action, failure.kind) == (action, kind)
