"""Pure lease logic: the take plan, local expiry judgement, and the table's item format."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from streamfn.connectors.lease_table.assigner import ExpiryClock, plan_takes
from streamfn.connectors.lease_table.table import Lease, checkpoint_update, lease_from_item
from streamfn.protocols.checkpoint import Checkpoint
from streamfn.protocols.source import StartingPosition
from streamfn.records import Position


def lease(shard: str, owner: str | None, counter: int = 1, *, parents: tuple[str, ...] = (),
          ended: bool = False) -> Lease:
    return Lease(key=f"p:{shard}", shard_id=shard, owner=owner, counter=counter,
                 checkpoint=Checkpoint(shard_end=ended), parent_ids=parents)


def owned(counts: dict[str | None, int]) -> list[Lease]:
    leases, n = [], 0
    for owner, count in counts.items():
        for _ in range(count):
            leases.append(lease(f"s{n}", owner))
            n += 1
    return leases


def test_a_lone_worker_takes_every_free_lease() -> None:
    plan = plan_takes(owned({None: 8}), "me", set(), set(), may_steal=True)
    assert len(plan.take) == 8 and plan.steal == [] and plan.target == 8


def test_takes_expired_leases_first_and_never_steals_while_some_are_expired() -> None:
    leases = owned({"a": 6, "b": 2})
    expired = {leases[6].key}  # one of b's leases expired
    plan = plan_takes(leases, "me", set(), expired, may_steal=True)
    assert [x.key for x in plan.take] == [leases[6].key]
    assert plan.steal == []


def test_steals_one_from_the_most_loaded_worker_when_none_expired() -> None:
    leases = owned({"a": 5, "b": 3})
    plan = plan_takes(leases, "me", set(), set(), may_steal=True)
    assert plan.target == 3 and plan.take == []
    assert len(plan.steal) == 1 and plan.steal[0].owner == "a"


def test_no_steal_when_the_busiest_is_at_target_and_one_is_needed() -> None:
    leases = owned({"a": 3, "b": 3, "me": 2})
    plan = plan_takes(leases, "me", {x.shard_id for x in leases if x.owner == "me"}, set(), may_steal=True)
    assert plan.take == [] and plan.steal == []


def test_steals_one_from_a_worker_at_target_when_more_than_one_is_needed() -> None:
    leases = owned({"a": 2, "b": 2})  # target ceil(4 / 3) = 2, I need 2
    plan = plan_takes(leases, "me", set(), set(), may_steal=True)
    assert len(plan.steal) == 1


def test_steal_waits_for_its_interval() -> None:
    assert plan_takes(owned({"a": 8}), "me", set(), set(), may_steal=False).steal == []


def test_the_per_worker_cap_holds() -> None:
    plan = plan_takes(owned({None: 8}), "me", set(), set(), may_steal=True, max_leases=3)
    assert len(plan.take) == 3


def test_finished_leases_and_blocked_children_are_not_assignable() -> None:
    leases = [lease("parent", "a"), lease("child", None, parents=("parent",)), lease("old", None, ended=True)]
    plan = plan_takes(leases, "me", set(), set(), may_steal=True)
    assert plan.take == [] and plan.steal == []
    leases[0] = lease("parent", None, ended=True)
    plan = plan_takes(leases, "me", set(), set(), may_steal=True)
    assert [x.shard_id for x in plan.take] == ["child"]


def test_a_child_whose_parent_lease_is_gone_is_assignable() -> None:
    plan = plan_takes([lease("child", None, parents=("trimmed",))], "me", set(), set(), may_steal=True)
    assert [x.shard_id for x in plan.take] == ["child"]


@given(st.lists(st.integers(0, 5), min_size=1, max_size=6), st.integers(0, 40), st.integers(0, 2**32))
def test_repeated_rounds_converge_to_a_balanced_spread(initial: list[int], free: int, seed: int) -> None:
    """Whatever the start, workers playing rounds in turn end within one lease of each other."""
    rng = random.Random(seed)
    workers = [f"w{i}" for i in range(len(initial))]
    leases = [lease(f"s{n}", None) for n in range(free)]
    for worker, count in zip(workers, initial, strict=True):
        leases += [lease(f"{worker}-{n}", worker) for n in range(count)]
    for _ in range(200):
        for me in workers:
            held = {x.shard_id for x in leases if x.owner == me}
            plan = plan_takes(leases, me, held, set(), may_steal=True, rng=rng)
            moved = {x.shard_id for x in plan.take + plan.steal}
            leases = [lease(x.shard_id, me, x.counter + 1) if x.shard_id in moved else x for x in leases]
    counts = [sum(1 for x in leases if x.owner == w) for w in workers]
    assert sum(counts) == len(leases)
    assert max(counts) - min(counts) <= 1


def test_expiry_needs_an_unchanged_counter_for_the_failover_time() -> None:
    clock = ExpiryClock(failover_time=10.0)
    live = lease("s", "a", counter=1)
    clock.observe([live], now=100.0)
    assert not clock.expired(live, now=105.0)  # first sight of an owned lease: live
    assert clock.expired(live, now=110.5)
    renewed = lease("s", "a", counter=2)
    clock.observe([renewed], now=111.0)
    assert not clock.expired(renewed, now=120.0)
    assert clock.expired(renewed, now=121.5)
    assert clock.expired(lease("t", None), now=0.0)  # unowned: free at once


def test_checkpoint_columns_round_trip_in_kcl_form() -> None:
    checkpoint = Checkpoint(position=Position(2**100 + 7, 3), pending=((Position(2**100 + 8), Position(2**100 + 9)),),
                            window_state=b"w")
    _, removes, values = checkpoint_update(checkpoint)
    assert values[":cp"] == {"S": str(2**100 + 7)} and values[":sub"] == {"N": "3"}
    item = {"leaseKey": {"S": "p:s1"}, "leaseCounter": {"N": "4"}, "leaseOwner": {"S": "me"},
            "checkpoint": values[":cp"], "checkpointSubSequenceNumber": values[":sub"],
            "streamfnPending": values[":pending"], "streamfnWindowState": values[":window"]}
    parsed = lease_from_item(item, "p:")
    assert parsed is not None and parsed.checkpoint == checkpoint and parsed.shard_id == "s1"
    assert "streamfnPending" not in removes and "streamfnStart" in removes
    assert lease_from_item(item, "other:") is None


def test_sentinels_mean_no_checkpoint_and_shard_end_ends() -> None:
    base = {"leaseKey": {"S": "s1"}, "leaseCounter": {"N": "0"}}
    fresh = lease_from_item({**base, "checkpoint": {"S": "TRIM_HORIZON"}}, "")
    assert fresh is not None and fresh.checkpoint == Checkpoint() and fresh.starting_position is None
    ended = lease_from_item({**base, "checkpoint": {"S": "SHARD_END"}}, "")
    assert ended is not None and ended.finished
    child = lease_from_item({**base, "checkpoint": {"S": "LATEST"}, "parentShardId": {"SS": ["s0"]}}, "")
    assert child is not None and child.starting_position == StartingPosition("trim_horizon")
    reset = lease_from_item({**base, "checkpoint": {"S": "AT_TIMESTAMP"}, "streamfnStart": {"S": "at_timestamp"},
                             "streamfnStartTimestamp": {"N": "1700000000.5"}}, "")
    assert reset is not None and reset.starting_position == StartingPosition("at_timestamp", 1700000000.5)


def test_a_lease_in_my_name_that_i_do_not_hold_is_taken_back_at_once() -> None:
    leases = [lease("s0", "me"), lease("s1", "a")]
    plan = plan_takes(leases, "me", set(), set(), may_steal=False)
    assert [x.shard_id for x in plan.take] == ["s0"]
