"""The traceback rate limit: every failure gets its line, a traceback is printed whole at most once
per interval per pipeline, and no repeat goes uncounted."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streamfn.engine.handler_log import TracebackLimiter, fingerprint, user_traceback

EVENTS = st.lists(st.tuples(st.floats(0, 5, allow_nan=False), st.sampled_from(["a", "b"]),
                            st.sampled_from(["t1", "t2", "t3"])), max_size=60)


@given(EVENTS)
def test_whole_at_most_once_per_interval_and_every_repeat_counted(events: list[tuple[float, str, str]]) -> None:
    now = [0.0]
    limiter = TracebackLimiter(every=10.0, clock=lambda: now[0])
    last_whole: dict[tuple[str, str], float] = {}
    without: dict[tuple[str, str], int] = {}
    for step, pipeline, trace in events:
        now[0] += step
        key = (pipeline, trace)
        whole, repeats = limiter.admit(key)
        if key not in last_whole:
            assert whole and repeats == 0, "the first occurrence is always printed whole"
        if whole:
            assert key not in last_whole or now[0] - last_whole[key] >= 10.0
            assert repeats == without.get(key, 0), "the whole copy says how many went without it"
            last_whole[key], without[key] = now[0], 0
        else:
            without[key] += 1
            assert repeats == without[key]
            assert now[0] - last_whole[key] < 10.0


def test_forgets_the_least_recently_seen_beyond_its_capacity() -> None:
    limiter = TracebackLimiter(every=60.0, clock=lambda: 0.0, remembered=2)
    for key in ("a", "b", "a", "c"):  # "b" is the least recently seen when "c" arrives
        limiter.admit(("p", key))
    assert limiter.admit(("p", "a")) == (False, 2)
    assert limiter.admit(("p", "b")) == (True, 0), "forgotten: printed whole again"


def _raise(message: str) -> None:
    raise ValueError(message)


def _caught(message: str) -> BaseException:
    try:
        _raise(message)
    except ValueError as exc:
        return exc
    raise AssertionError


def test_fingerprint_ignores_the_message_but_not_the_frames() -> None:
    one, two = _caught("record 1"), _caught("record 2")
    assert fingerprint(one, user_traceback(one)) == fingerprint(two, user_traceback(two))
    other = KeyError("x")
    try:
        raise other
    except KeyError:
        pass
    assert fingerprint(other, user_traceback(other)) != fingerprint(one, user_traceback(one))
