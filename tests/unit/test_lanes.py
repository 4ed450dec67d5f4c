"""The lane watermark: the checkpoint never passes a record still in flight in any lane."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streamfn import Position
from streamfn.engine.lanes import Watermark, lane_of


def test_lane_of_is_stable_and_in_range() -> None:
    assert lane_of("user-1", 10) == lane_of("user-1", 10)
    assert all(0 <= lane_of(f"k{i}", 4) < 4 for i in range(100))
    assert len({lane_of(f"k{i}", 4) for i in range(100)}) == 4


def test_watermark_waits_for_the_slowest_lane() -> None:
    mark = Watermark(2, None)
    for seq, lane in [(1, 0), (2, 1), (3, 0), (4, 1)]:
        mark.dispatched(Position(seq), lane)
    assert mark.lane_done(0, Position(3)) == Position(1)
    assert mark.lane_done(1, Position(2)) == Position(3)
    assert mark.lane_done(1, Position(4)) == Position(4)


@given(
    lanes=st.integers(1, 5),
    assignment=st.lists(st.integers(0, 4), min_size=1, max_size=80),
    data=st.data(),
)
def test_watermark_property(lanes: int, assignment: list[int], data: st.DataObject) -> None:
    mark = Watermark(lanes, None)
    per_lane: dict[int, list[int]] = {}
    for seq, lane in enumerate(assignment, start=1):
        lane %= lanes
        mark.dispatched(Position(seq), lane)
        per_lane.setdefault(lane, []).append(seq)
    progress = {lane: 0 for lane in per_lane}
    while any(progress[lane] < len(seqs) for lane, seqs in per_lane.items()):
        lane = data.draw(st.sampled_from([ln for ln, s in per_lane.items() if progress[ln] < len(s)]))
        progress[lane] += data.draw(st.integers(1, len(per_lane[lane]) - progress[lane]))
        mark.lane_done(lane, Position(per_lane[lane][progress[lane] - 1]))
        done = {seq for ln, seqs in per_lane.items() for seq in seqs[: progress[ln]]}
        expected = 0
        while expected + 1 in done:
            expected += 1
        assert (mark.position.sequence if mark.position else 0) == expected
    assert mark.position == Position(len(assignment))
