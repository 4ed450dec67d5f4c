"""The failure policy's pure decisions, and the backoff it waits with."""

from __future__ import annotations

import pytest

from streamfn import Record
from streamfn.backoff import Backoff
from streamfn.engine.policy import FailurePolicy, retry_backoff


def test_retry_backoff_doubles_with_a_floor_of_half() -> None:
    backoff = retry_backoff(FailurePolicy(initial_delay=1.0, max_delay=8.0))
    for ceiling in (1.0, 2.0, 4.0, 8.0, 8.0):
        assert ceiling / 2 <= backoff.next_delay() <= ceiling
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_full_jitter_is_the_default() -> None:
    backoff = Backoff(1.0, 1.0)
    assert min(backoff.next_delay() for _ in range(200)) < 0.5
    with pytest.raises(ValueError):
        Backoff(1.0, 2.0, floor=1.5)


def test_attempts_count_retries_after_the_first_call() -> None:
    assert not FailurePolicy().attempts_exhausted(10_000)  # -1: retry until success
    policy = FailurePolicy(max_attempts=2)
    assert not policy.attempts_exhausted(2)
    assert policy.attempts_exhausted(3)


def test_expired_records_are_split_per_record() -> None:
    records = [Record("s", i, "k", b"", arrival) for i, arrival in enumerate([10.0, 50.0, 95.0, 99.0])]
    expired, fresh = FailurePolicy(max_record_age=60).split_expired(records, now=100.0)
    assert [r.sequence for r in expired] == [0]
    assert [r.sequence for r in fresh] == [1, 2, 3]
    assert FailurePolicy().split_expired(records, now=1e9) == ([], records)
