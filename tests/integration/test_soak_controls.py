"""Crash soaks for every failure control, and fast reproductions of the crash bugs they found.

Each soak SIGKILLs a real daemon 50 times at random moments while a producer appends, then runs
``--until-caught-up``: every input record's output must exist exactly once (in the sinks, or in the
on-failure destination where the config disposes it), with shard order inside every object.
"""

from __future__ import annotations

import asyncio
import base64
import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from streamfn.connectors.local.store import LocalCheckpointStore
from streamfn.protocols.checkpoint import Checkpoint
from streamfn.records import Position
from tests.pipelines import append_at, daemon, kill, output_objects, run_until_caught_up, write_pipeline

Records = list[tuple[str, bytes]]
Groups = list[tuple[float | None, Records]]  # records appended together, with their arrival time (None: now)

# Every handler below starts with these constants (set per soak) and this helper.
PRELUDE = """
import os
import random
import time
from streamfn import Result

def item(r, **extra):
    return {"v": r.json()["v"], "seq": r.sequence, "shard": r.shard_id, "key": r.partition_key, **extra}
"""

PLAIN = """
def handle(batch, context):
    time.sleep(SLEEP * len(batch))
    return [item(r) for r in batch]
"""

# Random records fail on the batch's first attempt only; a restarted daemon draws afresh (SOAK_RUN).
PARTIAL = """
_rng = random.Random(os.environ.get("SOAK_RUN", "0"))

def handle(batch, context):
    time.sleep(SLEEP * len(batch))
    items = []
    for r in batch:
        if context.attempt == 0 and _rng.random() < P_FAIL:
            return Result(items=items, failed=[r.sequence])
        items.append(item(r))
    return items
"""

# A batch holding a poison record always fails; with P_FAIL, random records also fail the batch on its
# first attempt (a bisected half starts again at attempt 0 and draws afresh).
POISONED = """
_rng = random.Random(os.environ.get("SOAK_RUN", "0"))

def handle(batch, context):
    time.sleep(SLEEP * len(batch))
    bad = [r.json()["v"] for r in batch if r.json()["v"] in POISON]
    if bad:
        raise ValueError(f"poison records {bad}")
    if context.attempt == 0 and any(_rng.random() < P_FAIL for _ in batch):
        raise ValueError("a flaky record failed on the first attempt")
    return [item(r) for r in batch]
"""

# One item per record, plus the window's total on its final call.
WINDOWED = """
def handle(batch, context):
    time.sleep(SLEEP * len(batch))
    total = (context.state or {"total": 0})["total"] + len(batch)
    items = [item(r, window=context.window_start) for r in batch]
    if context.is_final:
        items.append({"final": True, "window": context.window_start, "shard": context.shard_id, "total": total})
    return Result(items=items, state={"total": total})
"""

#: Handler seconds per record: the daemon stays behind the producer at most kills, and batches are
#: short, so many kills land between a batch's sink write and its checkpoint (where replays come from).
SLEEP = 0.002

ON_FAILURE = '\n[on_failure]\ntype = "local"\npath = "failed"\n'


def handler(body: str, **constants: Any) -> str:
    header = "".join(f"{name} = {value!r}\n" for name, value in constants.items())
    return PRELUDE + header + body


def pipeline(folder: Path, code: str, *, extra: str = "", retry: str = "", max_records: int = 50,
             shards: int = 2) -> Path:
    config = write_pipeline(folder, code, shards=shards, extra=extra, batching=f"max_records = {max_records}")
    config.write_text(config.read_text().replace("max_delay = 0.05\n", f"max_delay = 0.05\n{retry}\n"))
    return config


def record(v: int, keys: int = 13) -> tuple[str, bytes]:
    return (f"k{v % keys}", orjson.dumps({"v": v}))


def live_groups(first: int, count: int) -> Groups:
    return [(None, [record(v) for v in range(first, first + count)])]


# ---- what came out ----------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the folders hold after a run, against the input: the figures a soak reports."""

    sunk: Counter[int] = field(default_factory=Counter)
    destined: Counter[int] = field(default_factory=Counter)
    destination_batches: list[list[int]] = field(default_factory=list)
    disordered_objects: list[str] = field(default_factory=list)
    finals: Counter[tuple[str, float]] = field(default_factory=Counter)
    final_totals: dict[tuple[str, float], list[int]] = field(default_factory=lambda: defaultdict(list))
    window_records: Counter[tuple[str, float]] = field(default_factory=Counter)

    @classmethod
    def read(cls, folder: Path) -> Outcome:
        outcome = cls()
        for key, items in output_objects(folder / "out").items():
            records = [i for i in items if not i.get("final")]
            shards = {i["shard"] for i in items}
            seqs = [i["seq"] for i in records]
            if len(shards) > 1 or seqs != sorted(set(seqs)):
                outcome.disordered_objects.append(key)
            outcome.sunk.update(i["v"] for i in records)
            for i in records:
                if "window" in i:
                    outcome.window_records[(i["shard"], i["window"])] += 1
            for i in items:
                if i.get("final"):
                    outcome.finals[(i["shard"], i["window"])] += 1
                    outcome.final_totals[(i["shard"], i["window"])].append(i["total"])
        for path in sorted((folder / "failed").rglob("*.json")):
            if path.name.startswith(".tmp-"):
                continue
            doc = orjson.loads(path.read_bytes())
            values = [orjson.loads(base64.b64decode(r["data"]))["v"] for r in doc["records"]]
            outcome.destination_batches.append(values)
            outcome.destined.update(values)
        return outcome

    def seen(self) -> int:
        return len(set(self.sunk) | set(self.destined))

    def figures(self, n: int) -> dict[str, int]:
        """Lost and duplicated records (and window outputs) against inputs 0..n-1."""
        both = self.sunk + self.destined
        window_keys = set(self.window_records) | set(self.finals)
        return {
            "lost": sum(1 for v in range(n) if v not in both),
            "duplicated": sum(1 for c in both.values() if c > 1),
            "extra_copies": sum(c - 1 for c in both.values() if c > 1),
            "in_sink_and_destination": len(set(self.sunk) & set(self.destined)),
            "disordered_objects": len(self.disordered_objects),
            "windows_without_final": sum(1 for w in window_keys if self.finals[w] == 0),
            "windows_with_repeated_final": sum(1 for w in window_keys if self.finals[w] > 1),
            "windows_with_wrong_total": sum(
                1 for w in window_keys if any(t != self.window_records[w] for t in self.final_totals[w])
            ),
        }


def assert_exact(name: str, outcome: Outcome, n: int) -> dict[str, int]:
    figures = outcome.figures(n)
    print(f"soak figures [{name}]: {figures}")
    disordered = outcome.disordered_objects[:5]
    assert not any(figures.values()), f"[{name}] not exactly once: {figures}; disordered objects: {disordered}"
    return figures


# ---- the soak ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Soak:
    """50 SIGKILLs at seeded random moments while a producer thread appends ``later`` chunk by chunk."""

    initial: Groups
    later: list[Groups]
    every: float = 1.0  # seconds between the producer's chunks
    kills: int = 50
    kill_after: tuple[float, float] = (0.3, 2.0)  # start-up takes ~0.4 s: most kills land mid-batch
    seed: int = 0

    @property
    def total(self) -> int:
        return sum(len(records) for groups in [self.initial, *self.later] for _, records in groups)

    def run(self, config: Path) -> Outcome:
        rng = random.Random(self.seed)
        appended = [append_at(config, self.initial)]
        producer = threading.Thread(target=self._produce, args=(config, appended), name="producer")
        producer.start()
        behind = 0
        try:
            for i in range(self.kills):
                proc = daemon(config, env={"SOAK_RUN": f"{self.seed}-{i}"})
                time.sleep(rng.uniform(*self.kill_after))
                kill(proc)
                proc.communicate(timeout=30)
                behind += Outcome.read(config.parent).seen() < sum(appended)
            chunks_during_kills = len(appended) - 1
        finally:
            producer.join()
        assert sum(appended) == self.total
        print(f"{behind} of {self.kills} kills landed while the daemon was behind; "
              f"{chunks_during_kills} of {len(self.later)} chunks appended meanwhile")
        assert chunks_during_kills >= len(self.later) // 2, "the producer appended while the daemon was killed"
        assert behind >= self.kills // 2, f"only {behind} of {self.kills} kills landed before the work was done"
        final = daemon(config, "--until-caught-up")
        _, err = final.communicate(timeout=180)
        assert final.returncode == 0, err.decode()[-3000:]
        return Outcome.read(config.parent)

    def _produce(self, config: Path, appended: list[int]) -> None:
        for groups in self.later:
            time.sleep(self.every)
            appended.append(append_at(config, groups))


def live_soak(seed: int, initial: int = 20000, chunks: int = 40, chunk: int = 600, every: float = 1.2) -> Soak:
    return Soak(
        initial=live_groups(0, initial),
        later=[live_groups(initial + c * chunk, chunk) for c in range(chunks)],
        every=every, seed=seed,
    )


def poison_values(soak: Soak, count: int) -> list[int]:
    return sorted(random.Random(soak.seed).sample(range(soak.total), count))


@pytest.mark.slow
@pytest.mark.parametrize("lanes", [1, 4], ids=["plain", "parallelization_factor-4"])
def test_soak_plain(tmp_path: Path, lanes: int) -> None:
    soak = live_soak(seed=10 + lanes)
    config = pipeline(tmp_path, handler(PLAIN, SLEEP=SLEEP * lanes), extra=f"parallelization_factor = {lanes}")
    outcome = soak.run(config)
    assert_exact(f"lanes={lanes}", outcome, soak.total)
    assert not outcome.destined


@pytest.mark.slow
def test_soak_partial_failures(tmp_path: Path) -> None:
    soak = live_soak(seed=30)
    config = pipeline(tmp_path, handler(PARTIAL, SLEEP=SLEEP, P_FAIL=0.004), extra="report_batch_item_failures = true")
    outcome = soak.run(config)
    assert_exact("report_batch_item_failures", outcome, soak.total)


@pytest.mark.slow
@pytest.mark.parametrize("p_fail", [0.0, 0.004], ids=["poison", "poison+flaky"])
def test_soak_bisect_with_poison(tmp_path: Path, p_fail: float) -> None:
    soak = live_soak(seed=40)
    poison = poison_values(soak, 20)
    config = pipeline(tmp_path, handler(POISONED, SLEEP=SLEEP, POISON=set(poison), P_FAIL=p_fail),
                      extra=ON_FAILURE, retry="bisect_on_error = true\nmax_attempts = 1")
    outcome = soak.run(config)
    figures = assert_exact(f"bisect_on_error p_fail={p_fail}", outcome, soak.total)
    assert sorted(outcome.destined.elements()) == poison, f"destination holds exactly the poison: {figures}"
    assert all(len(values) == 1 for values in outcome.destination_batches), "bisect isolates each poison record"


@pytest.mark.slow
def test_soak_max_attempts_with_on_failure(tmp_path: Path) -> None:
    soak = live_soak(seed=60)
    poison = poison_values(soak, 40)
    config = pipeline(tmp_path, handler(POISONED, SLEEP=SLEEP, POISON=set(poison), P_FAIL=0.0), extra=ON_FAILURE,
                      retry="max_attempts = 2")
    outcome = soak.run(config)
    assert_exact("max_attempts+on_failure", outcome, soak.total)
    assert set(poison) <= set(outcome.destined), "every poison record is disposed of"
    assert all(set(values) & set(poison) for values in outcome.destination_batches), \
        "only batches that hold a poison record are disposed of"


def window_groups(rng: random.Random, first: int, windows: int, base: float) -> tuple[Groups, int]:
    """``windows`` one-second windows in the past, most holding a single record, some two or three."""
    groups: Groups = []
    v = first
    for w in range(windows):
        size = 1 if rng.random() < 0.8 else rng.randint(2, 3)
        groups.append((base + w + 0.5, [record(x) for x in range(v, v + size)]))
        v += size
    return groups, v


@pytest.mark.slow
def test_soak_tumbling_windows_of_single_records(tmp_path: Path) -> None:
    rng = random.Random(50)
    base = float(int(time.time()) - 10**6)  # windows long over: every window closes at once
    initial, v = window_groups(rng, 0, 2000, base)
    later: list[Groups] = []
    for c in range(40):
        groups, v = window_groups(rng, v, 100, base + 2000 + c * 100)
        later.append(groups)
    soak = Soak(initial=initial, later=later, every=1.2, seed=50)
    # One call per record here, so a slower handler keeps the daemon behind.
    config = pipeline(tmp_path, handler(WINDOWED, SLEEP=5 * SLEEP), extra="tumbling_window = 1")
    # Arrival times days back: keep them all (the local log's default retention is 24 hours).
    config.write_text(config.read_text().replace("[source]\n", '[source]\nretention_hours = "unlimited"\n', 1))
    outcome = soak.run(config)
    assert_exact("tumbling_window", outcome, soak.total)
    assert outcome.window_records, "windows were handled"


# ---- fast reproductions -----------------------------------------------------------------------------------------


def _rewind(folder: Path, shard_id: str, pending: tuple[Position, Position]) -> None:
    """Leave the checkpoint a SIGKILL after a sink write leaves: pending bounds recorded, position not moved."""

    async def rewrite() -> None:
        store = LocalCheckpointStore(folder / "state" / "checkpoints.sqlite3", "p")
        await store.open()
        try:
            await store.save(shard_id, Checkpoint())
            await store.flush()
            await store.record_pending(shard_id, *pending)
        finally:
            await store.close()

    asyncio.run(rewrite())


def _only_shard(folder: Path) -> str:
    (key,) = output_objects(folder / "out")
    return key.split("/")[1]


# The record named in FAIL_FLAG (once the file exists) fails on the first attempt of its batch: with
# report_batch_item_failures it is reported, the records before it handled; else the call raises.
REPLAY_FAILS = """
def handle(batch, context):
    fail = int(open(FAIL_FLAG).read()) if os.path.exists(FAIL_FLAG) else -1
    if context.attempt == 0 and any(r.json()["v"] == fail for r in batch):
        done = [r for r in batch if r.json()["v"] < fail]
        if not REPORT:
            raise ValueError(f"record {fail} fails on its first attempt")
        return Result(items=[item(r) for r in done], failed=[batch[len(done)].sequence])
    return [item(r) for r in batch]
"""


@pytest.mark.parametrize("control", ["report_batch_item_failures", "bisect_on_error"])
@settings(max_examples=4, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(2, 10), fail=st.integers(0, 9))
@example(n=10, fail=5)
def test_a_replayed_batch_failing_on_its_first_attempt_keeps_its_output_once(
    tmp_path_factory: pytest.TempPathFactory, control: str, n: int, fail: int,
) -> None:
    """A batch written whole before a crash, re-formed after it, then failing partway (or split):
    its pre-crash object and the new objects must not both stay (issue 10, item 1)."""
    fail %= n  # the index of the failing record in the batch
    folder = tmp_path_factory.mktemp("replay")
    flag = folder / "fail-record"
    report = control == "report_batch_item_failures"
    code = handler(REPLAY_FAILS, FAIL_FLAG=str(flag), REPORT=report)
    config = pipeline(folder, code, extra="report_batch_item_failures = true" if report else "",
                      retry="" if report else "bisect_on_error = true", max_records=n, shards=1)
    append_at(config, live_groups(0, n))
    run_until_caught_up(config)
    assert len(output_objects(folder / "out")) == 1, f"one batch of {n}, written once"
    _rewind(folder, _only_shard(folder), (Position(1), Position(n)))
    flag.write_text(str(fail))
    run_until_caught_up(config)
    assert_exact(f"replayed {control}, {n} records failing at {fail}", Outcome.read(folder), n)


def test_window_final_call_keeps_the_last_single_record_batch(tmp_path: Path) -> None:
    """Single-record windows: the window's final call must not overwrite its last batch's object
    (issue 10, item 2)."""
    config = pipeline(tmp_path, handler(WINDOWED, SLEEP=0.0), extra="tumbling_window = 1", shards=1)
    base = float(int(time.time()) - 3600)
    append_at(config, [(base + w + 0.5, [record(w)]) for w in range(3)])
    run_until_caught_up(config, timeout=30)
    outcome = Outcome.read(tmp_path)
    assert len(outcome.finals) == 3, "three windows ended"
    assert_exact("single-record windows", outcome, 3)

