"""The lease table against a real DynamoDB (moto server): races, fencing, expiry, balance, handover."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from streamfn.connectors.lease_table.assigner import LeaseAssigner
from streamfn.connectors.lease_table.store import DynamoDBCheckpointStore, DynamoDBCheckpointStoreConfig, LeaseSettings
from streamfn.connectors.lease_table.table import LeaseTable
from streamfn.errors import LeaseLostError, RetryableError
from streamfn.protocols.checkpoint import Checkpoint
from streamfn.protocols.source import ShardInfo, Source, SourceTraits
from streamfn.records import Position

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# moto's server answers requests on several threads without a lock around DynamoDB's
# condition check and write: two conditional takes of one lease can both succeed (seen here
# once in 60 twelve-way races, the counter bumped once). Real DynamoDB applies conditional
# writes atomically, so the lease tests run moto with one request at a time.
SERIAL_MOTO = """
import sys, threading
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.server import MotoRequestHandler

app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()

def serial(environ, start_response):
    with lock:
        return list(app(environ, start_response))

run_simple(sys.argv[1], int(sys.argv[2]), serial, threaded=True, request_handler=MotoRequestHandler)
"""


@contextlib.contextmanager
def _moto_server() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERIAL_MOTO, "127.0.0.1", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def dynamodb_endpoint() -> Iterator[str]:
    """A moto server of our own that applies one request at a time (see SERIAL_MOTO)."""
    with _moto_server() as url:
        yield url


class FakeController:
    """A ShardController that records what the assigner asked."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.calls: list[tuple[str, str, bool]] = []

    async def start_shard(self, shard: ShardInfo) -> None:
        self.calls.append(("start", shard.shard_id, False))
        self.running.add(shard.shard_id)

    async def stop_shard(self, shard_id: str, *, abandon: bool = False) -> None:
        self.calls.append(("stop", shard_id, abandon))
        self.running.discard(shard_id)

    def running_shards(self) -> set[str]:
        return set(self.running)

    async def shard_finished(self, shard_id: str) -> bool:
        raise AssertionError("the lease assigner reads parents from the table")


class FakeSource(Source):
    traits = SourceTraits(kind="memory")

    name = "stream"

    def __init__(self, shards: list[ShardInfo]) -> None:
        self.shards = shards

    async def list_shards(self) -> list[ShardInfo]:
        return list(self.shards)




class StoreFactory:
    """Opens stores (workers) on one fresh table; closes them all at the end."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.table = f"leases-{uuid.uuid4().hex[:8]}"
        self.stores: list[DynamoDBCheckpointStore] = []

    async def __call__(self, worker: str, *, failover: float = 2.0, take: float = 0.3,
                       steal: float | None = None, renew: float | None = None,
                       **settings: Any) -> DynamoDBCheckpointStore:
        config = DynamoDBCheckpointStoreConfig(
            table=self.table, worker_id=worker, failover_time=failover, take_interval=take,
            steal_interval=steal, renew_interval=renew, endpoint_url=self.endpoint, **settings,
        )
        store = DynamoDBCheckpointStore(config.settings("pipe"))
        await store.open()
        self.stores.append(store)
        return store

    async def close(self) -> None:
        for store in self.stores:
            await store.close()


@pytest.fixture
async def workers(dynamodb_endpoint: str) -> AsyncIterator[StoreFactory]:
    factory = StoreFactory(dynamodb_endpoint)
    yield factory
    await factory.close()


def shards(n: int) -> list[ShardInfo]:
    return [ShardInfo(f"shardId-{i:012d}") for i in range(n)]


async def wait_for(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_exactly_one_worker_wins_a_take_race(workers: StoreFactory) -> None:
    first = await workers("w0")
    await first.table.create("s1", ())
    stores = [first, *[await workers(f"w{i}") for i in range(1, 12)]]
    (seen,) = await first.table.scan()
    results = await asyncio.gather(*(store.take(seen) for store in stores))
    winners = [store.worker_id for store, held in zip(stores, results, strict=True) if held is not None]
    assert len(winners) == 1
    lease = await first.table.get("s1")
    assert lease is not None and lease.owner == winners[0] and lease.owner_switches == 1


async def test_a_zombie_cannot_move_a_checkpoint(workers: StoreFactory) -> None:
    zombie, thief = await workers("zombie"), await workers("thief")
    await zombie.table.create("s1", ())
    (lease,) = await zombie.table.scan()
    assert await zombie.take(lease) is not None
    await zombie.save("s1", Checkpoint(position=Position(10)))
    await zombie.flush()
    stolen_from = await thief.table.get("s1")
    assert stolen_from is not None and stolen_from.owner == "zombie"
    assert await thief.take(stolen_from) is not None

    await zombie.save("s1", Checkpoint(position=Position(20)))
    with pytest.raises(LeaseLostError):
        await zombie.flush()
    with pytest.raises(LeaseLostError):
        await zombie.record_pending("s1", Position(21), Position(30))
    with pytest.raises(LeaseLostError):
        await zombie.save("s1", Checkpoint(position=Position(40)))
    assert zombie.lost.get_nowait() == "s1"
    after = await thief.table.get("s1")
    assert after is not None and after.owner == "thief"
    assert after.checkpoint.position == Position(10) and after.checkpoint.pending == ()
    assert after.owner_switches == 1
    assert await thief.load("s1") == Checkpoint(position=Position(10))


async def test_checkpoint_round_trips_with_pending_and_window(workers: StoreFactory) -> None:
    owner, reader = await workers("owner"), await workers("reader")
    await owner.table.create("s1", ())
    (lease,) = await owner.table.scan()
    await owner.take(lease)
    await owner.save("s1", Checkpoint(position=Position(5, 2), window_state=b"state"))
    await owner.record_pending("s1", Position(6), Position(9))  # durable at once, no flush
    loaded = await reader.load("s1")
    assert loaded == Checkpoint(position=Position(5, 2), pending=((Position(6), Position(9)),),
                                window_state=b"state")
    await owner.save("s1", Checkpoint(position=Position(9)))
    await owner.flush()
    assert await reader.load("s1") == Checkpoint(position=Position(9))
    await owner.save("s1", Checkpoint(position=Position(12), shard_end=True))
    await owner.flush()
    ended = await reader.load("s1")
    assert ended is not None and ended.shard_end
    assert await reader.load("unknown") is None


async def test_expiry_is_judged_by_an_unchanged_counter(workers: StoreFactory) -> None:
    holder = await workers("holder", failover=1.0, renew=0.2)
    watcher = await workers("watcher", failover=1.0)
    await holder.table.create("s1", ())
    (lease,) = await holder.table.scan()
    await holder.take(lease)
    assigner = LeaseAssigner(watcher)

    def expired_now() -> bool:
        now = time.monotonic()
        return assigner.clock.expired(leases[0], now)

    leases = await watcher.table.scan()
    assigner.clock.observe(leases, time.monotonic())
    assert not expired_now()  # owned and seen for the first time: live until proven otherwise
    for _ in range(8):  # 1.6 s > failover while the holder renews: never expired
        await asyncio.sleep(0.2)
        leases = await watcher.table.scan()
        assigner.clock.observe(leases, time.monotonic())
        assert not expired_now()

    await holder.close()  # stops renewing without releasing: a crash as far as the table knows
    leases = await watcher.table.scan()
    assigner.clock.observe(leases, time.monotonic())
    assert not expired_now()
    await asyncio.sleep(1.2)
    leases = await watcher.table.scan()
    assigner.clock.observe(leases, time.monotonic())
    assert expired_now()
    assert await watcher.take(leases[0]) is not None


async def run_assigner(store: DynamoDBCheckpointStore, source: FakeSource) -> tuple[FakeController, asyncio.Task[None]]:
    controller = FakeController()
    task = asyncio.create_task(LeaseAssigner(store, source).run(controller))
    return controller, task


async def stop(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_eight_leases_spread_three_three_two(workers: StoreFactory) -> None:
    source = FakeSource(shards(8))
    stores = [await workers(f"w{i}", failover=2.0, take=0.3) for i in range(3)]
    running = [await run_assigner(store, source) for store in stores]
    try:
        await wait_for(lambda: sorted(len(s.held) for s in stores) == [2, 3, 3], 30, "a 3/3/2 spread")
        await asyncio.sleep(1.0)  # a balanced spread stays put: nobody steals at target
        assert sorted(len(s.held) for s in stores) == [2, 3, 3]
        held = [set(s.held) for s in stores]
        assert set.union(*held) == {s.shard_id for s in source.shards}
        for store, (controller, _) in zip(stores, running, strict=True):
            assert controller.running == set(store.held)
    finally:
        await stop([task for _, task in running])


async def test_steals_one_lease_at_a_time_from_the_busiest(workers: StoreFactory) -> None:
    source = FakeSource(shards(6))
    busy, newcomer = await workers("busy", failover=30.0), await workers("newcomer", failover=30.0, steal=0.0)
    busy_controller, busy_assigner = FakeController(), LeaseAssigner(busy, source)
    await busy_assigner.round(busy_controller, source, sync=True)
    assert len(busy.held) == 6
    assigner, controller = LeaseAssigner(newcomer, source), FakeController()
    counts = []
    for _ in range(4):
        await assigner.round(controller, source)
        counts.append(len(newcomer.held))
    assert counts == [1, 2, 3, 3]  # none expired: one steal a round, up to ceil(6 / 2)
    assert controller.running == set(newcomer.held)
    # The busy worker learns it lost three leases from its next scan (its renewal is 10 s away).
    await busy_assigner.round(busy_controller, source)
    lost = {busy.lost.get_nowait() for _ in range(3)}
    assert lost == set(newcomer.held) and len(busy.held) == 3


async def test_lost_lease_stops_its_shard_without_checkpoint(workers: StoreFactory) -> None:
    source = FakeSource(shards(1))
    victim = await workers("victim", failover=30.0, renew=0.2)
    controller, task = await run_assigner(victim, source)
    try:
        await wait_for(lambda: controller.running == {"shardId-000000000000"}, 10, "the shard to start")
        thief = await workers("thief")
        for _ in range(20):  # the victim renews every 0.2 s: take it between two renewals
            (lease,) = await thief.table.scan()
            if await thief.take(lease) is not None:
                break
        assert "shardId-000000000000" in thief.held
        await wait_for(lambda: ("stop", "shardId-000000000000", True) in controller.calls, 5, "an abandon")
        assert victim.held == {}
    finally:
        await stop([task])


class AnswersLost(LeaseTable):
    """The real table, but the next fenced write's answer never arrives: the write is applied or not
    (as a timed-out request may be), and the caller sees a timeout either way."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.next_write_applied: bool | None = None

    async def fenced_update(self, *args: Any, **kwargs: Any) -> None:
        applied, self.next_write_applied = self.next_write_applied, None
        if applied is None:
            return await super().fenced_update(*args, **kwargs)
        if applied:
            await super().fenced_update(*args, **kwargs)
        raise RetryableError("dynamodb update_item got no answer within 2s", kind="timeout")


@pytest.mark.parametrize(("applied", "edited"), [(True, False), (False, False), (True, True), (False, True)])
async def test_a_write_that_got_no_answer_loses_the_lease_only_if_another_moved_it(
        workers: StoreFactory, applied: bool, edited: bool) -> None:
    """Like KCL after a failed renewal: the next conditional write failing because our own unanswered
    write was applied keeps the lease; an operator's edit (same owner, counter bumped) still stops it."""
    settings = DynamoDBCheckpointStoreConfig(table=workers.table, worker_id="w", failover_time=30.0,
                                             renew_interval=600.0, endpoint_url=workers.endpoint).settings("pipe")
    table = AnswersLost(settings.table, prefix=settings.prefix, endpoint_url=workers.endpoint, request_timeout=5.0)
    store = DynamoDBCheckpointStore(settings, table)
    await store.open()
    workers.stores.append(store)
    assert await store.acquire("s1")
    table.next_write_applied = applied
    await store.renew_all()  # logs "renewal failed; will retry", keeps the lease: failover is 30 s
    assert "s1" in store.held
    if edited:
        seen = await table.get("s1")
        assert seen is not None
        await table.overwrite(seen, [], [], {}, force=True)  # what `streamfn checkpoints set --force` does

    await store.save("s1", Checkpoint(position=Position(5)))
    if edited:
        with pytest.raises(LeaseLostError):
            await store.flush()
        assert store.lost.get_nowait() == "s1"
        after = await table.get("s1")
        assert after is not None and after.checkpoint.position is None
        return
    await store.flush()
    assert store.lost.empty() and "s1" in store.held
    after = await table.get("s1")
    assert after is not None and after.owner == "w" and after.checkpoint.position == Position(5)
    await store.renew_all()
    renewed = await table.get("s1")
    assert store.lost.empty() and renewed is not None and store.held["s1"].counter == renewed.counter


async def test_graceful_release_hands_over_without_waiting_for_failover(workers: StoreFactory) -> None:
    source = FakeSource(shards(4))
    leaving = await workers("leaving", failover=60.0)
    staying = await workers("staying", failover=60.0, max_leases_to_steal=0)
    await LeaseAssigner(leaving, source).round(FakeController(), source, sync=True)
    for shard in list(leaving.held):
        await leaving.save(shard, Checkpoint(position=Position(7)))
    staying_assigner, controller = LeaseAssigner(staying, source), FakeController()
    await staying_assigner.round(controller, source)
    assert len(staying.held) == 0  # all live, failover 60 s, no stealing: nothing to take

    await LeaseAssigner(leaving, source).release()
    await staying_assigner.round(controller, source)
    assert len(staying.held) == 4
    for shard in staying.held:
        assert await staying.load(shard) == Checkpoint(position=Position(7))


async def test_children_start_only_after_their_parents_ended(workers: StoreFactory) -> None:
    parent = ShardInfo("shardId-000000000000")
    children = [ShardInfo("shardId-000000000001", ("shardId-000000000000",)),
                ShardInfo("shardId-000000000002", ("shardId-000000000000",))]
    source = FakeSource([parent, *children])
    a, b = await workers("a"), await workers("b")
    assigner_a, assigner_b = LeaseAssigner(a, source), LeaseAssigner(b, source)
    controller_a, controller_b = FakeController(), FakeController()
    await assigner_a.round(controller_a, source, sync=True)
    await assigner_b.round(controller_b, source)
    assert set(a.held) == {parent.shard_id} and controller_a.running == {parent.shard_id}
    assert b.held == {} and controller_b.running == set()

    await a.save(parent.shard_id, Checkpoint(position=Position(99), shard_end=True))
    controller_a.running.discard(parent.shard_id)  # the runner finished the shard
    await assigner_a.round(controller_a, source)  # releases the ended lease
    await assigner_b.round(controller_b, source)
    await assigner_a.round(controller_a, source)
    started = controller_a.running | controller_b.running
    assert started == {c.shard_id for c in children}
    for assigner, controller in ((assigner_a, controller_a), (assigner_b, controller_b)):
        await assigner.round(controller, source)  # whoever has none steals one
    await a.renew_all()
    await b.renew_all()
    assert len(a.held) == 1 and len(b.held) == 1
    ended = await b.table.get(parent.shard_id)
    assert ended is not None and ended.finished and ended.owner is None
    for child in children:
        holder = a if child.shard_id in a.held else b
        assert holder.starting_position(child.shard_id) is not None  # children start at trim horizon


async def test_reads_a_table_written_by_the_kinesis_client_library(workers: StoreFactory) -> None:
    store = await workers("w")
    kcl = DynamoDBCheckpointStore(LeaseSettings(table=workers.table, prefix="", worker_id="streamfn",
                                                endpoint_url=workers.endpoint, failover_time=1.0))
    await kcl.open()
    workers.stores.append(kcl)
    sequence = "49590338271490256608559692538361571095921575989136588898"
    await store.table.call("put_item", TableName=workers.table, Item={
        "leaseKey": {"S": "shardId-000000000003"}, "leaseOwner": {"S": "kcl-worker-1"},
        "leaseCounter": {"N": "41"}, "checkpoint": {"S": sequence},
        "checkpointSubSequenceNumber": {"N": "2"}, "ownerSwitchesSinceCheckpoint": {"N": "0"},
        "parentShardId": {"SS": ["shardId-000000000001"]},
    })
    assert await kcl.load("shardId-000000000003") == Checkpoint(position=Position(int(sequence), 2))
    (lease,) = await kcl.table.scan()
    assert lease.owner == "kcl-worker-1" and lease.parent_ids == ("shardId-000000000001",)

    # Migration: once the KCL workers are stopped, their leases expire and streamfn takes them
    # with their progress; the missing parent lease does not block the shard.
    source = FakeSource([ShardInfo("shardId-000000000003", ("shardId-000000000001",))])
    assigner, controller = LeaseAssigner(kcl, source), FakeController()
    await assigner.round(controller, source)
    assert kcl.held == {}  # the KCL owner counts as live until seen idle for the failover time
    await asyncio.sleep(kcl.settings.failover_time + 0.2)
    await assigner.round(controller, source)
    assert controller.running == {"shardId-000000000003"}
    assert await kcl.load("shardId-000000000003") == Checkpoint(position=Position(int(sequence), 2))
    await kcl.save("shardId-000000000003", Checkpoint(position=Position(int(sequence) + 1)))
    await kcl.flush()
    item = (await kcl.table.call("get_item", TableName=workers.table,
                                 Key={"leaseKey": {"S": "shardId-000000000003"}}))["Item"]
    assert item["checkpoint"] == {"S": str(int(sequence) + 1)} and item["leaseOwner"] == {"S": "streamfn"}
    assert item["checkpointSubSequenceNumber"] == {"N": "0"} and item["ownerSwitchesSinceCheckpoint"] == {"N": "0"}


async def test_only_listed_shards_are_taken_and_trimmed_finished_leases_go(workers: StoreFactory) -> None:
    store = await workers("w")
    for shard in ("gone-finished", "gone-open", "kept-finished"):
        await store.table.create(shard, ())
    for lease in await store.table.scan():
        if lease.shard_id.endswith("finished"):
            held = await store.take(lease)
            assert held is not None
            await store.save(lease.shard_id, Checkpoint(position=Position(5), shard_end=True))
            await store.release(lease.shard_id)
    source = FakeSource([ShardInfo("kept-finished"), ShardInfo("live")])
    assigner, controller = LeaseAssigner(store, source), FakeController()
    await assigner.round(controller, source, sync=True)
    assert sorted(lease.shard_id for lease in await store.table.scan()) == ["gone-open", "kept-finished", "live"]
    assert controller.running == {"live"}  # a lease whose shard the stream does not list is left alone

    other = await workers("other")  # another worker listed a new shard first and created its lease
    await other.table.create("new", ())
    source.shards.append(ShardInfo("new"))
    await assigner.round(controller, source)
    assert controller.running == {"live", "new"}


async def test_acquire_takes_a_free_lease_and_refuses_a_held_one(workers: StoreFactory) -> None:
    first, second = await workers("first"), await workers("second")
    assert await first.acquire("s1")
    assert await first.acquire("s1")  # already held: nothing to do
    assert not await second.acquire("s1")
    await first.release("s1")
    assert await second.acquire("s1")


async def test_checkpoint_interval_coalesces_saves_and_flush_does_not_wait_for_it(workers: StoreFactory) -> None:
    store, reader = await workers("w", checkpoint_interval=30.0), await workers("reader")
    assert await store.acquire("s1")
    await store.save("s1", Checkpoint(position=Position(1)))  # the first write goes at once
    await asyncio.sleep(0.3)
    for n in range(2, 6):
        await store.save("s1", Checkpoint(position=Position(n)))
    await asyncio.sleep(0.3)
    assert await reader.load("s1") == Checkpoint(position=Position(1))  # later saves wait for the interval
    async with asyncio.timeout(10):  # far below the 30 s interval: a guarded write never waits for it
        await store.record_pending("s1", Position(6), Position(9))
    assert await reader.load("s1") == Checkpoint(position=Position(5), pending=((Position(6), Position(9)),))
    await store.save("s1", Checkpoint(position=Position(9)))
    async with asyncio.timeout(10):
        await store.flush()
    assert await reader.load("s1") == Checkpoint(position=Position(9))
