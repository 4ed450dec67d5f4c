"""Several daemon processes share one stream through the lease table (moto server DynamoDB).

The stream here is the embedded local log, read by every worker from one file: it isolates
the lease protocol from any Kinesis server. Output objects carry the pid of the worker that
wrote them, so a zombie's late write would show.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamfn.connectors.lease_table.table import Lease, LeaseTable
from streamfn.errors import CheckpointError
from tests.integration.aws_support import client, create_stream, put, shard_hash_starts, unique, wait_active
from tests.pipelines import REPO, append, kill, output_objects

from .test_leases import dynamodb_endpoint

__all__ = ["dynamodb_endpoint"]

HANDLER = """
import os
import time

def handle(batch, context):
    time.sleep(float(os.environ.get("BATCH_SLEEP", "0.05")))
    with open(os.environ["HANDLED_LOG"], "a") as log:  # one short append per call: whole lines
        log.write(f"{batch.shard_id} {batch.first.sequence} {batch.last.sequence} {time.time()} {os.getpid()}\\n")
    return [{"v": r.json()["v"], "shard": r.shard_id, "pid": os.getpid()} for r in batch]
"""


class Cluster:
    """Daemon processes (``streamfn run``) of one pipeline on one lease table."""

    def __init__(self, folder: Path, endpoint: str, n: int, *, source: str = "", batch_sleep: float = 0.05,
                 max_records: int = 20, **leases: Any) -> None:
        self.folder = folder
        self.endpoint = endpoint
        self.batch_sleep = batch_sleep
        self.table = f"leases-{uuid.uuid4().hex[:8]}"
        self.n = n
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "lease_handler.py").write_text(textwrap.dedent(HANDLER))
        self.source = source or LOCAL_SOURCE
        self.max_records = max_records
        self.settings = {"table": self.table, "endpoint_url": endpoint, "failover_time": 3.0, "take_interval": 0.5,
                         "steal_interval": 0.5, "shard_sync_interval": 1.0, **leases}
        self.config = self.write_config("pipeline.toml", {})
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stream = ""

    def write_config(self, name: str, overrides: dict[str, Any]) -> Path:
        settings = {**self.settings, **overrides}
        checkpoints = "\n".join(f"{key} = {orjson.dumps(value).decode()}" for key, value in settings.items())
        path = self.folder / name
        path.write_text(
            'name = "pipe"\nhandler = "lease_handler:handle"\nstate_dir = "state"\n'
            f"{self.source}\n"
            f'[checkpoints]\ntype = "dynamodb"\n{checkpoints}\n'
            f"[batching]\nmax_records = {self.max_records}\n"
            '[retry]\ninitial_delay = 0.01\nmax_delay = 0.05\n'
            '[[sinks]]\ntype = "local"\npath = "out"\nfsync = false\n'
        )
        return path

    def start(self, **overrides: Any) -> subprocess.Popen[bytes]:
        """A worker; ``overrides`` change its [checkpoints] settings (same table, same pipeline)."""
        config = self.write_config(f"pipeline-{len(self.procs)}.toml", overrides) if overrides else self.config
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "BATCH_SLEEP": str(self.batch_sleep),
               "HANDLED_LOG": str(self.folder / "handled.log"), "PYTHONPATH": str(REPO)}
        log = open(self.folder / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115 - kept by the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamfn", "--log-format", "json", "run", str(config)],
            cwd=self.folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        return (self.folder / f"worker-{self.procs.index(proc)}.log").read_text(errors="replace")

    def leases_now(self) -> list[Lease]:
        async def scan() -> list[Lease]:
            table = LeaseTable(self.table, prefix="pipe:", endpoint_url=self.endpoint)
            await table.open()
            try:
                return await table.scan()
            except CheckpointError as exc:
                if "ResourceNotFound" in str(exc):  # no worker created the table yet
                    return []
                raise
            finally:
                await table.close()

        return asyncio.run(scan())

    def owners(self) -> Counter[str | None]:
        return Counter(lease.owner for lease in self.leases_now() if not lease.finished)

    def owner_of(self, proc: subprocess.Popen[bytes]) -> set[str]:
        return {lease.shard_id for lease in self.leases_now()
                if lease.owner is not None and lease.owner.split(":")[1] == str(proc.pid)}

    def outputs(self) -> dict[str, list[Any]]:
        return output_objects(self.folder / "out")

    def handled(self) -> Counter[int]:
        return Counter(item["v"] for items in self.outputs().values() for item in items)

    def calls(self) -> list[tuple[str, int, int, float, int]]:
        """Every handler call: (shard, first sequence, last sequence, wall time, pid)."""
        path = self.folder / "handled.log"
        if not path.exists():
            return []
        rows = [line.split() for line in path.read_text().splitlines()]
        return [(shard, int(a), int(b), float(t), int(pid)) for shard, a, b, t, pid in rows]

    def stop_all(self) -> None:
        for proc in self.procs:
            kill(proc, signal.SIGCONT)
            kill(proc, signal.SIGKILL)
            proc.wait(10)


LOCAL_SOURCE = '[source]\ntype = "local"\nstream = "s"\nshards = 8\n'


def local_cluster(folder: Path, endpoint: str, n: int, **options: Any) -> Cluster:
    cluster = Cluster(folder, endpoint, n, **options)
    append(cluster.config, [(f"k{i}", orjson.dumps({"v": i})) for i in range(n)])
    return cluster


KINESIS_SOURCE = """[source]
type = "kinesis"
stream = "{stream}"
endpoint_url = "{endpoint}"
idle_interval = 0.1
max_reads_per_second = 20.0
backoff_initial = 0.05
backoff_max = 0.5
"""


def kinesis_cluster(folder: Path, dynamodb: str, kinesis: str, n: int, shards: int = 8,
                    **options: Any) -> Cluster:
    """A cluster on a new kinesis-mock stream holding records 0..n-1, spread evenly over its shards."""
    stream = unique("leases")

    async def fill() -> None:
        async with client("kinesis", kinesis) as api:
            await create_stream(api, stream, shards)
            starts = list((await shard_hash_starts(api, stream)).values())
            await put(api, stream, [(f"k{i}", orjson.dumps({"v": i}), starts[i % shards]) for i in range(n)])

    asyncio.run(fill())
    cluster = Cluster(folder, dynamodb, n, source=KINESIS_SOURCE.format(stream=stream, endpoint=kinesis), **options)
    cluster.stream = stream
    return cluster


@pytest.fixture(params=["local", "kinesis"])
def cluster_factory(
    request: pytest.FixtureRequest, tmp_path: Path, dynamodb_endpoint: str,
) -> Iterator[Callable[..., Cluster]]:
    """Clusters on the local log, and on an 8-shard kinesis-mock stream."""
    made: list[Cluster] = []

    def make(n: int, **options: Any) -> Cluster:
        if request.param == "kinesis":
            request.getfixturevalue("aws_env")
            kinesis = request.getfixturevalue("kinesis_endpoint")
            cluster = kinesis_cluster(tmp_path, dynamodb_endpoint, kinesis, n, **options)
        else:
            cluster = local_cluster(tmp_path, dynamodb_endpoint, n, **options)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop_all()


def wait_until(predicate: Callable[[], bool], within: float, what: str,
               alive: Sequence[subprocess.Popen[bytes]] = ()) -> None:
    """Poll ``predicate``; fail at once if a worker that should be running exited."""
    deadline = time.monotonic() + within
    while not predicate():
        for proc in alive:
            if proc.poll() is not None:
                raise AssertionError(f"worker {proc.pid} exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        time.sleep(0.2)


def assert_exactly_once(cluster: Cluster) -> None:
    handled = cluster.handled()
    duplicated = [v for v, count in handled.items() if count > 1]
    assert not duplicated, f"records in more than one output object: {duplicated[:10]}"
    assert sorted(handled) == list(range(cluster.n))


def all_handled(cluster: Cluster) -> Callable[[], bool]:
    return lambda: len(cluster.handled()) == cluster.n


def spread(cluster: Cluster) -> list[int]:
    return sorted(count for owner, count in cluster.owners().items() if owner is not None)


def test_three_workers_spread_three_three_two_and_handle_everything(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory(4000)
    procs = [cluster.start() for _ in range(3)]
    wait_until(lambda: spread(cluster) == [2, 3, 3], 60, "a 3/3/2 spread of 8 leases", procs)
    wait_until(all_handled(cluster), 120, "every record handled", procs)
    assert_exactly_once(cluster)
    pids = {item["pid"] for items in cluster.outputs().values() for item in items}
    assert pids <= {p.pid for p in procs}
    for proc in procs:
        kill(proc, signal.SIGTERM)
    for proc in procs:
        assert proc.wait(30) == 0, cluster.log_of(proc)[-3000:]
    assert set(cluster.owners()) == {None}  # a graceful stop releases every lease


def test_a_killed_workers_shards_are_taken_over_after_failover(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory(8000, batch_sleep=0.3)  # 50 batches a shard: ~15 s of work
    procs = [cluster.start() for _ in range(3)]
    wait_until(lambda: spread(cluster) == [2, 3, 3], 60, "a 3/3/2 spread")
    victim = procs[0]
    orphaned = cluster.owner_of(victim)
    assert orphaned and len(cluster.handled()) < cluster.n, "the kill lands while work remains"
    kill(victim, signal.SIGKILL)
    victim.wait(10)
    wait_until(lambda: not cluster.owner_of(victim) and spread(cluster) == [4, 4], 30,
               "the killed worker's leases taken over", procs[1:])
    wait_until(all_handled(cluster), 120, "every record handled", procs[1:])
    assert_exactly_once(cluster)


def test_a_zombie_writes_nothing_after_losing_its_leases(cluster_factory: Callable[..., Cluster]) -> None:
    # The zombie never steals: once its leases are taken, it must hold nothing and write nothing.
    cluster = cluster_factory(8000, batch_sleep=0.3)
    zombie = cluster.start(max_leases_per_worker=3, max_leases_to_steal=0)
    wait_until(lambda: len(cluster.owner_of(zombie)) == 3, 30, "the zombie to hold 3 leases")
    others = [cluster.start(), cluster.start()]
    wait_until(lambda: spread(cluster) in ([2, 3, 3], [1, 3, 4]), 30, "all 8 leases held")
    time.sleep(1.0)  # the zombie is in the middle of batches
    zombie_shards = cluster.owner_of(zombie)
    kill(zombie, signal.SIGSTOP)
    wait_until(lambda: not cluster.owner_of(zombie), 30, "the paused worker's leases taken over")
    before = {lease.shard_id: lease for lease in cluster.leases_now()}
    resumed_at = time.time()
    kill(zombie, signal.SIGCONT)
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:  # it wakes with every timer overdue: watch it try
        for lease in cluster.leases_now():
            assert lease.owner is None or lease.owner.split(":")[1] != str(zombie.pid), "the zombie took a lease"
            old = before[lease.shard_id].checkpoint.position
            new = lease.checkpoint.position
            assert lease.checkpoint.shard_end or old is None or (new is not None and new >= old)
        time.sleep(0.2)
    late = [name for name, items in cluster.outputs().items()
            if items and items[0]["pid"] == zombie.pid
            and (cluster.folder / "out" / name).stat().st_mtime > resumed_at]
    # Fencing is checked before a write starts: a write that passed its check (its batch bounds
    # recorded under the lease) just before the pause may complete after it. That is at most one
    # object per shard the zombie held, at the key the new owner writes too, so output stays exact.
    late_shards = [name.split("/")[1] for name in late]
    assert len(late_shards) == len(set(late_shards)) and set(late_shards) <= zombie_shards, (
        f"the zombie wrote output after losing its leases beyond its in-flight writes: {late[:5]}")
    finished_late = [call for call in cluster.calls() if call[4] == zombie.pid and call[3] > resumed_at]
    assert finished_late, "the zombie had a batch in flight: its handler returned after the pause"
    wait_until(all_handled(cluster), 120, "every record handled", others)
    assert_exactly_once(cluster)
    assert "lease lost" in cluster.log_of(zombie)
    wait_until(all_handled(cluster), 120, "every record handled")
    assert_exactly_once(cluster)
    assert others[0].poll() is None and others[1].poll() is None


def test_graceful_stop_hands_leases_over_without_waiting_for_failover(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = cluster_factory(4000, failover_time=60.0)  # a takeover after failover would time the test out
    leaving, staying = cluster.start(), cluster.start()
    wait_until(lambda: spread(cluster) == [4, 4], 60, "a 4/4 spread")
    handed = cluster.owner_of(leaving)
    kill(leaving, signal.SIGTERM)
    assert leaving.wait(30) == 0, cluster.log_of(leaving)[-3000:]
    wait_until(lambda: handed <= cluster.owner_of(staying), 10, "the released leases taken at once")
    wait_until(all_handled(cluster), 120, "every record handled")
    assert_exactly_once(cluster)


def test_resharding_with_two_workers_runs_parents_before_children(
    tmp_path: Path, dynamodb_endpoint: str, kinesis_endpoint: str, aws_env: dict[str, str],
) -> None:
    cluster = kinesis_cluster(tmp_path, dynamodb_endpoint, kinesis_endpoint, 400, shards=2, batch_sleep=0.1,
                              max_records=10)
    procs = [cluster.start(), cluster.start()]
    try:
        wait_until(lambda: spread(cluster) == [1, 1], 60, "one lease each", procs)

        async def reshard() -> dict[str, tuple[str, ...]]:
            """Split shard 0, then merge its upper child with shard 1, putting records at each step."""
            async with client("kinesis", kinesis_endpoint) as api:
                shards = (await api.list_shards(StreamName=cluster.stream))["Shards"]
                first = next(s for s in shards if s["ShardId"] == "shardId-000000000000")
                low, high = (int(first["HashKeyRange"][k]) for k in ("StartingHashKey", "EndingHashKey"))
                await api.split_shard(StreamName=cluster.stream, ShardToSplit="shardId-000000000000",
                                      NewStartingHashKey=str((low + high + 1) // 2))
                await wait_active(api, cluster.stream)
                await put_spread(api, 400, 200)
                open_shards = await shard_hash_starts(api, cluster.stream)
                upper = max((s for s in open_shards if s != "shardId-000000000001"), key=open_shards.__getitem__)
                await api.merge_shards(StreamName=cluster.stream, ShardToMerge=upper,
                                       AdjacentShardToMerge="shardId-000000000001")
                await wait_active(api, cluster.stream)
                await put_spread(api, 600, 200)
                listed = (await api.list_shards(StreamName=cluster.stream))["Shards"]
                return {s["ShardId"]: tuple(p for p in (s.get("ParentShardId"), s.get("AdjacentParentShardId")) if p)
                        for s in listed}

        async def put_spread(api: Any, first: int, count: int) -> None:
            starts = list((await shard_hash_starts(api, cluster.stream)).values())
            await put(api, cluster.stream, [(f"k{v}", orjson.dumps({"v": v}), starts[v % len(starts)])
                                            for v in range(first, first + count)])

        parents_of = asyncio.run(reshard())
        cluster.n = 800
        assert len(parents_of) == 5 and sum(len(p) == 2 for p in parents_of.values()) == 1  # one merge
        wait_until(all_handled(cluster), 120, "every record handled, children included", procs)
        assert_exactly_once(cluster)
        calls = cluster.calls()
        first_call = {shard: min(t for s, _, _, t, _ in calls if s == shard) for shard in parents_of}
        last_call = {shard: max(t for s, _, _, t, _ in calls if s == shard) for shard in parents_of}
        for child, parents in parents_of.items():
            for parent in parents:
                assert last_call[parent] < first_call[child], f"{child} started before its parent {parent} ended"
        ended = {lease.shard_id for lease in cluster.leases_now() if lease.finished}
        assert ended == {shard for parents in parents_of.values() for shard in parents}
        workers_seen = {pid for *_, pid in calls}
        assert workers_seen <= {p.pid for p in procs}
    finally:
        cluster.stop_all()
