"""Issue 16's acceptance: an unreachable or hung sink or store is visible from outside within seconds.

A real ``streamfn run`` daemon handles a local-log stream that a producer keeps appending to,
writing through a proxy of the test's own (``OutageProxy``) to moto: an S3 sink, a DynamoDB sink,
or (with a local sink) the DynamoDB lease store. While records flow, the proxy hangs (accepts,
forwards nothing) or refuses connections for ``OUTAGE`` seconds. From outside:

- ``/readyz`` fails and ``streamfn_shard_blocked`` reads 1 within ``ready_max_blocked_seconds`` + 2 s;
- ``streamfn_write_errors_total{target=..., kind=...}`` moves (``timeout`` for a hang,
  ``connection`` for a refusal);
- ``/readyz`` is ready again within 2 s of the endpoint's return;
- every record's output exists exactly once, and no checkpoint was ever ahead of the output.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamfn.connectors.lease_table.table import lease_from_item
from streamfn.connectors.local.log import LocalLog
from streamfn.connectors.local.store import decode_checkpoint
from streamfn.protocols.checkpoint import Checkpoint
from tests.integration.aws_support import client, unique
from tests.outage_proxy import OutageProxy
from tests.pipelines import daemon, kill, output_objects, write_pipeline
from tests.servers import free_port

OUTAGE = 8.0
READY_MAX_BLOCKED = 3.0
REQUEST_TIMEOUT = 2.0
#: Seconds allowed from the outage's start to /readyz failing and the blocked gauge reading 1.
NOTICE_WITHIN = READY_MAX_BLOCKED + 2.0
#: Seconds allowed from the endpoint's return to /readyz being ready again.
RECOVER_WITHIN = 2.0
SHARDS = 2

HANDLER = """
def handle(batch, context):
    return [{"id": f"{r.shard_id}:{r.sequence}", "shard": r.shard_id, "seq": r.sequence, "v": r.json()["v"]}
            for r in batch]
"""

#: (shard, sequence) -> v of every record whose output is stored.
Output = dict[tuple[str, int], int]


@dataclass
class Target:
    """One thing that can go out: how the pipeline names it and how the test reads what it holds."""

    label: str
    pipeline_sections: str
    read_output: Callable[[], Awaitable[list[dict[str, Any]]]]
    read_checkpoints: Callable[[], Awaitable[dict[str, Checkpoint]]]


@dataclass
class Observation:
    at: float
    ready: bool
    blocked: bool
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)


class S3Objects:
    """Every object's items in a bucket, fetching only objects new or changed since the last read."""

    def __init__(self, endpoint: str, bucket: str) -> None:
        self._endpoint, self._bucket = endpoint, bucket
        self._seen: dict[str, tuple[str, list[dict[str, Any]]]] = {}

    async def items(self) -> list[dict[str, Any]]:
        async with client("s3", self._endpoint) as s3:
            listed = {}
            async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self._bucket):
                listed.update({entry["Key"]: entry["ETag"] for entry in page.get("Contents", ())})
            for key, etag in listed.items():
                if key in self._seen and self._seen[key][0] == etag:
                    continue
                obj = await s3.get_object(Bucket=self._bucket, Key=key)
                async with obj["Body"] as body:
                    self._seen[key] = (obj["ETag"], [orjson.loads(line) for line in (await body.read()).splitlines()])
        return [item for key in listed for item in self._seen[key][1]]


async def dynamodb_items(endpoint: str, table: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    async with client("dynamodb", endpoint) as ddb:
        async for page in ddb.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
            items += [{"shard": i["shard"]["S"], "seq": int(i["seq"]["N"]), "v": int(i["v"]["N"])}
                      for i in page["Items"]]
    return items


def local_checkpoints(state_dir: Path) -> dict[str, Checkpoint]:
    path = state_dir / "checkpoints.sqlite3"
    if not path.exists():
        return {}
    db = sqlite3.connect(path, timeout=10)
    try:
        rows = db.execute("SELECT shard_id, state FROM checkpoints").fetchall()
    except sqlite3.OperationalError:  # the daemon has not created the table yet
        return {}
    finally:
        db.close()
    return {shard: decode_checkpoint(state) for shard, state in rows}


async def lease_checkpoints(endpoint: str, table: str, prefix: str) -> dict[str, Checkpoint]:
    found: dict[str, Checkpoint] = {}
    async with client("dynamodb", endpoint) as ddb:
        with contextlib.suppress(ddb.exceptions.ResourceNotFoundException):
            async for page in ddb.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
                for item in page["Items"]:
                    lease = lease_from_item(item, prefix)
                    if lease is not None:
                        found[lease.shard_id] = lease.checkpoint
    return found


async def build_target(kind: str, folder: Path, moto: str, proxy: str) -> Target:
    """The pipeline sections for ``kind`` (its AWS part through ``proxy``) and readers on moto itself."""
    state_dir = folder / "state"
    if kind == "s3":
        bucket = unique("outage")
        sections = (f'[[sinks]]\ntype = "s3"\nbucket = "{bucket}"\nendpoint_url = "{proxy}"\n'
                    f"create_bucket = true\nrequest_timeout = {REQUEST_TIMEOUT}\n")
        return Target("sink", sections, S3Objects(moto, bucket).items,
                      lambda: asyncio.to_thread(local_checkpoints, state_dir))
    if kind == "dynamodb":
        table = unique("outage")
        async with client("dynamodb", moto) as ddb:
            await ddb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                                   AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                                   KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])
        sections = (f'[[sinks]]\ntype = "dynamodb"\ntable = "{table}"\nendpoint_url = "{proxy}"\n'
                    f"request_timeout = {REQUEST_TIMEOUT}\n")
        return Target("sink", sections, lambda: dynamodb_items(moto, table),
                      lambda: asyncio.to_thread(local_checkpoints, state_dir))
    table = unique("leases")
    # failover_time 20: the lease outlives the outage (renewals fail meanwhile), so what is seen is the
    # blocked checkpoint write, not a lost lease. take_interval 2: the assigner counts as settled
    # (and /readyz as ready) only after a take round that finds the leases its own.
    sections = ('[[sinks]]\ntype = "local"\npath = "out"\nfsync = false\n'
                f'[checkpoints]\ntype = "dynamodb"\ntable = "{table}"\nendpoint_url = "{proxy}"\n'
                f"failover_time = 20\ntake_interval = 2\nrequest_timeout = {REQUEST_TIMEOUT}\n")

    async def local_items() -> list[dict[str, Any]]:
        objects = await asyncio.to_thread(output_objects, folder / "out")
        return [item for items in objects.values() for item in items]

    return Target("checkpoint store", sections, local_items, lambda: lease_checkpoints(moto, table, "p:"))


class Producer:
    """Appends records to the pipeline's log from a thread, ``rate`` per second, until stopped."""

    def __init__(self, state_dir: Path, rate: int = 200) -> None:
        self._log_path = state_dir / "log.sqlite3"
        self._rate = rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.sent = 0
        self.error: BaseException | None = None

    def prime(self, count: int) -> None:
        self._append(LocalLog(self._log_path), count)

    def _append(self, log: LocalLog, count: int) -> None:
        log.create_stream("s", SHARDS)
        records = [(f"k{v % 13}", orjson.dumps({"v": v})) for v in range(self.sent, self.sent + count)]
        log.append("s", records)
        self.sent += count

    def _run(self) -> None:
        log = LocalLog(self._log_path)
        try:
            step = max(1, self._rate // 10)
            while not self._stop.wait(0.1):
                self._append(log, step)
        except BaseException as exc:
            self.error = exc
        finally:
            log.close()

    def __enter__(self) -> Producer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


class Watcher:
    """Polls /readyz and /metrics of the daemon."""

    def __init__(self, port: int, session: aiohttp.ClientSession) -> None:
        self._base = f"http://127.0.0.1:{port}"
        self._session = session

    async def observe(self) -> Observation:
        now = time.monotonic()
        try:
            async with self._session.get(self._base + "/readyz") as answer:
                ready = answer.status == 200
            async with self._session.get(self._base + "/metrics") as answer:
                text = await answer.text()
        except (aiohttp.ClientError, TimeoutError):
            return Observation(now, ready=False, blocked=False)
        blocked, errors = False, Counter[tuple[str, str]]()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "streamfn_shard_blocked" and sample.value >= 1:
                    blocked = True
                elif sample.name == "streamfn_write_errors_total":
                    errors[(sample.labels.get("target", ""), sample.labels.get("kind", ""))] += int(sample.value)
        return Observation(now, ready, blocked, errors)

    async def until(self, condition: Callable[[Observation], bool], timeout: float) -> Observation | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = await self.observe()
            if condition(seen):
                return seen
            await asyncio.sleep(0.1)
        return None

    async def during(self, seconds: float) -> list[Observation]:
        seen: list[Observation] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            seen.append(await self.observe())
            await asyncio.sleep(0.2)
        return seen


def exact(items: list[dict[str, Any]], sent: int) -> Output:
    """The output by (shard, sequence), after checking every record's output is there exactly once."""
    counts = Counter(item["v"] for item in items)
    duplicated = sorted(v for v, n in counts.items() if n > 1)
    missing = sorted(set(range(sent)) - set(counts))
    assert not duplicated and not missing, f"duplicated {duplicated[:10]}, missing {missing[:10]} of {sent}"
    assert len(counts) == sent
    return {(item["shard"], int(item["seq"])): item["v"] for item in items}


def behind_output(checkpoints: dict[str, Checkpoint], seen: set[tuple[str, int]], universe: set[tuple[str, int]]
                  ) -> list[str]:
    """Shards whose checkpoint passes a record whose output was not stored when it was read."""
    ahead = []
    for shard, checkpoint in checkpoints.items():
        if checkpoint.position is None:
            continue
        mark = int(checkpoint.position.sequence)
        gap = sorted(seq for s, seq in universe - seen if s == shard and seq <= mark)
        if gap:
            ahead.append(f"{shard}: checkpoint {mark} passes {gap[:5]} not in the output")
    return ahead


async def start_outage(proxy: OutageProxy, mode: str) -> None:
    if mode == "hang":
        proxy.hang()
    else:
        await proxy.refuse()


@pytest.mark.parametrize("mode", ["hang", "refuse"])
@pytest.mark.parametrize("kind", ["s3", "dynamodb", "lease store"])
async def test_an_outage_is_visible_and_loses_nothing(tmp_path: Path, moto_endpoint: str, aws_env: dict[str, str],
                                                      kind: str, mode: str) -> None:
    port = free_port()
    async with OutageProxy(moto_endpoint) as proxy, aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=2)) as session:
        target = await build_target(kind, tmp_path, moto_endpoint, proxy.endpoint)
        config = write_pipeline(
            tmp_path, HANDLER, shards=SHARDS, batching="max_records = 50\nwindow = 0.2",
            sinks=target.pipeline_sections + f"[metrics]\nenabled = true\nport = {port}\n"
                                             f"ready_max_blocked_seconds = {READY_MAX_BLOCKED}\n")
        producer = Producer(tmp_path / "state")
        producer.prime(200)
        process = daemon(config)
        log = drain(process)  # a full stderr pipe would stall the daemon's logging, and the daemon
        watcher = Watcher(port, session)
        try:
            with producer:
                assert await watcher.until(lambda o: o.ready, 20), f"the daemon never became ready\n{tail(log)}"
                assert await wait_for_output(target, 1, 15), f"no output before the outage\n{tail(log)}"
                before = await watcher.observe()

                await start_outage(proxy, mode)
                outage_started = time.monotonic()
                during = await watcher.during(OUTAGE / 2)
                checkpoints = await target.read_checkpoints()  # mid-outage: checkpoints first, then output
                stored_mid = {(i["shard"], int(i["seq"])) for i in await target.read_output()}
                during += await watcher.during(OUTAGE - (time.monotonic() - outage_started))

                await proxy.restore()
                restored = time.monotonic()
                back = await watcher.until(lambda o: o.ready and not o.blocked, 15)
            assert producer.error is None, producer.error
            assert await wait_for_output(target, producer.sent, 30), \
                f"the output never caught up after the outage\n{tail(log)}"
            final_checkpoints = await target.read_checkpoints()
            kill(process, signal.SIGTERM)
            await asyncio.to_thread(process.wait, timeout=30)
        finally:
            kill(process)
            process.wait(10)
        log_tail = tail(log)
        assert process.returncode == 0, log_tail

        # Data first (what this side guarantees), then what the engine shows from outside.
        output = exact(await target.read_output(), producer.sent)
        universe = set(output)
        assert not behind_output(checkpoints, stored_mid, universe), behind_output(checkpoints, stored_mid, universe)
        assert not behind_output(final_checkpoints, universe, universe)

        # What the engine shows from outside (awaits the engine's blocked-write marking and error counter).
        expected_kind = "timeout" if mode == "hang" else "connection"
        seen = Visibility(
            not_ready=next((o.at - outage_started for o in during if not o.ready), None),
            blocked=next((o.at - outage_started for o in during if o.blocked), None),
            recovered=None if back is None else back.at - restored,
            errors_moved=(back.errors if back else during[-1].errors)[(target.label, expected_kind)]
            - before.errors[(target.label, expected_kind)],
        )
        print(f"{kind}/{mode}: {seen}")
        assert seen.ok(), f"{seen}; error counters {dict(during[-1].errors)}\n{log_tail}"


@dataclass(frozen=True)
class Visibility:
    """Seconds from the outage's start to /readyz failing and to the blocked gauge; from the endpoint's
    return to ready again; how much the write error counter of the expected target and kind moved."""

    not_ready: float | None
    blocked: float | None
    recovered: float | None
    errors_moved: int

    def ok(self) -> bool:
        return (self.not_ready is not None and self.not_ready <= NOTICE_WITHIN
                and self.blocked is not None and self.blocked <= NOTICE_WITHIN
                and self.recovered is not None and self.recovered <= RECOVER_WITHIN
                and self.errors_moved > 0)


def drain(process: subprocess.Popen[bytes]) -> bytearray:
    """Collect the daemon's stderr as it comes (stdout is not used)."""
    collected = bytearray()
    stream = process.stderr
    assert stream is not None

    def read() -> None:
        while chunk := stream.read1(65536):
            collected.extend(chunk)

    threading.Thread(target=read, daemon=True).start()
    return collected


def tail(log: bytearray) -> str:
    return bytes(log[-3000:]).decode(errors="replace")


async def wait_for_output(target: Target, count: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len({i["v"] for i in await target.read_output()}) >= count:
            return True
        await asyncio.sleep(0.3)
    return False
