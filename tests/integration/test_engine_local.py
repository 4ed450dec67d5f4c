"""Engine semantics on the embedded local log, end to end: order, once per batch, retries, lanes."""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.pipelines import append, output_objects, run_until_caught_up, write_pipeline

ECHO = """
from streamfn import Result

def handle(batch, context):
    return [{"shard": r.shard_id, "seq": r.sequence, "key": r.partition_key, "v": r.json()["v"],
             "call": f"{batch.first.sequence}-{batch.last.sequence}"} for r in batch]
"""


def events(n: int, keys: int = 7) -> list[tuple[str, bytes]]:
    return [(f"key-{i % keys}", orjson.dumps({"v": i})) for i in range(n)]


def assert_each_record_once_in_shard_order(out: Path, n: int) -> dict[str, list[int]]:
    objects = output_objects(out)
    seen: dict[str, list[int]] = defaultdict(list)
    values = []
    for key in sorted(objects):  # keys sort by shard, then by first sequence
        items = objects[key]
        calls = {item["call"] for item in items}
        assert len(calls) == 1, f"{key} mixes calls {calls}"
        for item in items:
            seen[item["shard"]].append(item["seq"])
            values.append(item["v"])
    assert sorted(values) == list(range(n)), "every record handled exactly once"
    for shard, seqs in seen.items():
        assert seqs == sorted(seqs), f"{shard} out of order"
        assert seqs == list(range(1, len(seqs) + 1)), f"{shard} has gaps or repeats"
    return seen


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(0, 300),
    shards=st.integers(1, 5),
    max_records=st.integers(1, 64),
    window=st.sampled_from([0.0, 0.0, 0.05]),
    appends=st.integers(1, 4),
)
def test_each_record_once_in_shard_order(
    tmp_path_factory: object, n: int, shards: int, max_records: int, window: float, appends: int
) -> None:
    folder = tmp_path_factory.mktemp("order")  # type: ignore[attr-defined]
    config = write_pipeline(folder, ECHO, shards=shards, batching=f"max_records = {max_records}\nwindow = {window}")
    data = events(n)
    step = max(1, n // appends)
    for start in range(0, n, step):
        append(config, data[start : start + step])
    run_until_caught_up(config)
    assert_each_record_once_in_shard_order(folder / "out", n)
    for objects in output_objects(folder / "out").values():
        assert len(objects) <= max_records


def test_resume_strictly_after_checkpoint(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, ECHO, shards=2)
    append(config, events(50))
    run_until_caught_up(config)
    append(config, [(k, orjson.dumps({"v": v + 50})) for k, v in ((f"key-{i % 7}", i) for i in range(30))])
    run_until_caught_up(config)
    assert_each_record_once_in_shard_order(tmp_path / "out", 80)


FLAKY = """
import json, os, time
from pathlib import Path

LOG = Path(__file__).with_name("calls.ndjson")

def handle(batch, context):
    first = batch.first.sequence
    fail = batch.shard_id == "{shard}" and first == {first} and context.attempt < {failures}
    with LOG.open("a") as f:
        f.write(json.dumps({{"shard": batch.shard_id, "first": first, "last": batch.last.sequence,
                             "attempt": context.attempt, "ok": not fail, "t": time.monotonic()}}) + "\\n")
    if fail:
        raise RuntimeError("flaky downstream")
    time.sleep(0.01)
    return [{{"shard": r.shard_id, "seq": r.sequence, "key": r.partition_key, "v": r.json()["v"],
              "call": f"{{batch.first.sequence}}-{{batch.last.sequence}}"}} for r in batch]
"""


def test_failing_batch_is_retried_and_its_shard_waits(tmp_path: Path) -> None:
    failures = 4
    config = write_pipeline(
        tmp_path, FLAKY.format(shard="shard-0000", first=11, failures=failures), shards=3,
        batching="max_records = 10",
    )
    config.write_text(config.read_text().replace("initial_delay = 0.01\nmax_delay = 0.05",
                                                 "initial_delay = 0.1\nmax_delay = 0.2"))
    append(config, events(300))
    run_until_caught_up(config)
    assert_each_record_once_in_shard_order(tmp_path / "out", 300)
    calls = [orjson.loads(line) for line in (tmp_path / "calls.ndjson").read_bytes().splitlines()]
    failing = [c for c in calls if c["shard"] == "shard-0000" and c["first"] == 11]
    assert [c["attempt"] for c in failing] == list(range(failures + 1))
    assert [c["ok"] for c in failing] == [False] * failures + [True]
    recovered = failing[-1]["t"]
    later_same_shard = [c for c in calls if c["shard"] == "shard-0000" and c["first"] > 11]
    assert later_same_shard and all(c["t"] > recovered for c in later_same_shard), "later batches waited"
    others_during = [c for c in calls if c["shard"] != "shard-0000" and failing[0]["t"] < c["t"] < recovered]
    assert others_during, "other shards progressed while shard-0000 retried"


LANES = """
import time

def handle(batch, context):
    time.sleep(0.002)
    return [{"shard": r.shard_id, "seq": r.sequence, "key": r.partition_key, "v": r.json()["v"]} for r in batch]
"""


def test_parallelization_keeps_per_key_order(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, LANES, shards=2, extra="parallelization_factor = 4")
    append(config, events(400, keys=13))
    run_until_caught_up(config)
    items = list(itertools.chain.from_iterable(output_objects(tmp_path / "out").values()))
    assert sorted(i["v"] for i in items) == list(range(400))
    # Objects of one lane sort by first sequence; per key, sequences must grow across objects.
    by_key: dict[str, list[int]] = defaultdict(list)
    for item in items:
        by_key[item["key"]].append(item["seq"])
    for seqs in by_key.values():
        assert seqs == sorted(seqs)
