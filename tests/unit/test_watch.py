"""status --watch's parsing of /metrics and its records/s."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streamfn.ops.watch import Sample, Scrape, parse, rates, render

METRICS = """\
# TYPE streamfn_records_handled counter
streamfn_records_handled_total{pipeline="p",shard="shard-0000"} 120.0
# TYPE streamfn_retries counter
streamfn_retries_total{pipeline="p",shard="shard-0000"} 3.0
# TYPE streamfn_write_errors counter
streamfn_write_errors_total{pipeline="p",shard="shard-0000",target="sink",kind="throttled"} 2.0
streamfn_write_errors_total{pipeline="p",shard="shard-0000",target="store",kind="io"} 1.0
# TYPE streamfn_checkpoint_lag_records gauge
streamfn_checkpoint_lag_records{pipeline="p",shard="shard-0000"} 40.0
# TYPE streamfn_shard_blocked_seconds gauge
streamfn_shard_blocked_seconds{pipeline="p",shard="shard-0000"} 12.0
# TYPE streamfn_attempt gauge
streamfn_attempt{pipeline="p",shard="shard-0000"} 4.0
# TYPE streamfn_shards_owned gauge
streamfn_shards_owned{pipeline="p"} 1.0
"""


def test_parse_reads_each_shards_series() -> None:
    scraped = parse(METRICS, at=10.0)
    assert scraped.shards == {("p", "shard-0000"): Sample(handled=120, retries=3, write_errors=3, lag=40,
                                                          blocked_seconds=12, attempt=4)}
    frame = render(scraped, {("p", "shard-0000"): 25.0}, url="http://x", clock="00:00:00")
    assert "YES 12s (attempt 4)" in frame and "25" in frame and "40" in frame


@given(st.floats(0, 1e9), st.floats(0, 1e6), st.floats(0.01, 100))
def test_rate_is_the_counter_change_per_second(before: float, added: float, elapsed: float) -> None:
    key = ("p", "s")
    first = Scrape(100.0, {key: Sample(handled=before)})
    second = Scrape(100.0 + elapsed, {key: Sample(handled=before + added)})
    speed = rates(first, second)[key]
    assert speed is not None and abs(speed * elapsed - ((before + added) - before)) <= 1e-6 * max(1.0, before + added)
    restarted = Scrape(second.at + 1, {key: Sample(handled=(before + added) / 2 - 1)})
    assert rates(second, restarted)[key] is None, "a counter that went back (a restart) has no rate"
    assert rates(None, first)[key] is None
