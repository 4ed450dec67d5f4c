"""Lambda's failure controls on the local log, rule by rule, with record-level outcomes:
which records reached the handler and in which calls, what the destination received, where
the checkpoint ended."""

from __future__ import annotations

import itertools
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamfn.connectors.local.store import decode_checkpoint
from streamfn.engine.windows import FINAL_CALL_GRACE
from streamfn.protocols.checkpoint import Checkpoint
from tests.pipelines import append, output_objects, run_until_caught_up, write_pipeline

# The handler logs every call, fails on "poison" records (always) and on "flaky" ones (first
# call only); in partial mode it stops at the first failing record and reports it.
HANDLER = """
import json
from pathlib import Path
from streamfn import Result

CALLS = Path(__file__).with_name("calls.ndjson")
POISON = set({poison})
FLAKY = set({flaky})
PARTIAL = {partial}

def handle(batch, context):
    values = [r.json()["v"] if r.data.startswith(b"{{") else r.data.decode() for r in batch]
    with CALLS.open("a") as f:
        f.write(json.dumps({{"shard": batch.shard_id if len(batch) else None, "values": values,
                             "attempt": context.attempt}}) + "\\n")
    items = []
    for record, value in zip(batch, values):
        bad = value in POISON or (value in FLAKY and context.attempt == 0)
        if bad and PARTIAL:
            return Result(items=items, failed=[record.sequence])
        if bad:
            raise ValueError(f"bad record {{value}}")
        items.append({{"v": value, "key": record.partition_key, "seq": record.sequence}})
    return items
"""


def setup(folder: Path, n: int, *, poison: set[int] = frozenset(), flaky: set[int] = frozenset(),  # type: ignore[assignment]
          partial: bool = False, extra: str = "", retry: str = "", shards: int = 1, max_records: int = 10,
          keys: int = 5) -> Path:
    code = HANDLER.format(poison=sorted(poison), flaky=sorted(flaky), partial=partial)
    extra_lines = extra + ("\nreport_batch_item_failures = true" if partial else "")
    extra_lines += '\n[on_failure]\ntype = "local"\npath = "failed"\n'
    config = write_pipeline(folder, code, shards=shards, extra=extra_lines, batching=f"max_records = {max_records}")
    text = config.read_text().replace("max_delay = 0.05\n", f"max_delay = 0.05\n{retry}\n")
    config.write_text(text)
    append(config, [(f"k{i % keys}", orjson.dumps({"v": i})) for i in range(n)])
    return config


def calls(folder: Path) -> list[dict[str, Any]]:
    path = folder / "calls.ndjson"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def handled(folder: Path) -> list[int]:
    return [item["v"] for items in output_objects(folder / "out").values() for item in items]


def destination(folder: Path) -> list[dict[str, Any]]:
    return [orjson.loads(p.read_bytes()) for p in sorted((folder / "failed").rglob("*.json"))]


def destined_values(folder: Path) -> list[int]:
    import base64

    return [orjson.loads(base64.b64decode(r["data"]))["v"] for doc in destination(folder) for r in doc["records"]]


def checkpoints(folder: Path) -> dict[str, Checkpoint]:
    db = sqlite3.connect(folder / "state" / "checkpoints.sqlite3")
    rows = db.execute("SELECT shard_id, state FROM checkpoints")
    return {shard: decode_checkpoint(state) for shard, state in rows}


def final_sequence(folder: Path) -> int:
    (checkpoint,) = checkpoints(folder).values()
    assert checkpoint.position is not None
    return checkpoint.position.sequence


def test_default_retries_until_success(tmp_path: Path) -> None:
    config = setup(tmp_path, 30, flaky={3, 17})
    run_until_caught_up(config)
    assert sorted(handled(tmp_path)) == list(range(30))
    assert [c["values"][0] for c in calls(tmp_path)] == [0, 0, 10, 10, 20]
    assert destination(tmp_path) == []
    assert final_sequence(tmp_path) == 30


def test_bisect_isolates_the_poison_record(tmp_path: Path) -> None:
    config = setup(tmp_path, 20, poison={13}, retry="bisect_on_error = true\nmax_attempts = 2")
    run_until_caught_up(config)
    log = calls(tmp_path)
    assert sorted(handled(tmp_path)) == [v for v in range(20) if v != 13]
    alone = [c for c in log if c["values"] == [13]]
    assert [c["attempt"] for c in alone] == [0, 1, 2], "splits use no attempts; retries of the single record do"
    assert [c["values"] for c in log[:4]] == [list(range(10)), list(range(10, 20)), list(range(10, 15)),
                                                [10, 11]]
    (doc,) = destination(tmp_path)
    assert doc["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert doc["requestContext"]["approximateInvokeCount"] == 3
    assert doc["responseContext"]["functionError"] == "Unhandled"
    assert doc["KinesisBatchInfo"]["batchSize"] == 1
    assert destined_values(tmp_path) == [13]
    assert final_sequence(tmp_path) == 20


def test_max_attempts_sends_the_whole_batch_with_its_records(tmp_path: Path) -> None:
    config = setup(tmp_path, 25, poison={12}, retry="max_attempts = 1")
    run_until_caught_up(config)
    assert [c["attempt"] for c in calls(tmp_path) if c["values"][0] == 10] == [0, 1]
    assert sorted(handled(tmp_path)) == [v for v in range(25) if not 10 <= v < 20]
    assert destined_values(tmp_path) == list(range(10, 20))
    (doc,) = destination(tmp_path)
    info = doc["KinesisBatchInfo"]
    assert (info["startSequenceNumber"], info["endSequenceNumber"], info["batchSize"]) == ("11", "20", 10)
    assert doc["requestContext"]["approximateInvokeCount"] == 2
    assert final_sequence(tmp_path) == 25


def test_partial_failure_retries_from_the_lowest_failed_record(tmp_path: Path) -> None:
    config = setup(tmp_path, 20, flaky={4, 15}, partial=True)
    run_until_caught_up(config)
    log = calls(tmp_path)
    assert [c["values"] for c in log] == [list(range(10)), list(range(4, 10)), list(range(10, 20)),
                                          list(range(15, 20))]
    assert sorted(handled(tmp_path)) == list(range(20)), "records before the failure are not handled twice"
    assert final_sequence(tmp_path) == 20


def test_partial_failure_past_max_attempts_sends_the_rest(tmp_path: Path) -> None:
    config = setup(tmp_path, 10, poison={6}, partial=True, retry="max_attempts = 0")
    run_until_caught_up(config)
    assert sorted(handled(tmp_path)) == list(range(6))
    assert destined_values(tmp_path) == [6, 7, 8, 9]
    (doc,) = destination(tmp_path)
    assert doc["responseContext"]["functionError"] is None
    assert final_sequence(tmp_path) == 10


def test_max_record_age_sends_only_expired_records(tmp_path: Path) -> None:
    import time

    config = setup(tmp_path, 0, retry="max_record_age = 60", max_records=100)
    append(config, [("k1", orjson.dumps({"v": v})) for v in range(5)], arrival_time=time.time() - 120)
    append(config, [("k1", orjson.dumps({"v": v})) for v in range(5, 8)])
    run_until_caught_up(config)
    assert destined_values(tmp_path) == [0, 1, 2, 3, 4]
    (doc,) = destination(tmp_path)
    assert doc["requestContext"]["condition"] == "RecordAgeExceeded"
    assert "responseContext" not in doc
    assert [c["values"] for c in calls(tmp_path)] == [[5, 6, 7]]
    assert sorted(handled(tmp_path)) == [5, 6, 7]
    assert final_sequence(tmp_path) == 8


def test_filters_skip_records_but_the_checkpoint_passes_them(tmp_path: Path) -> None:
    extra = 'filters = [{ data = { v = [{ numeric = [">=", 15] }] } }, { partitionKey = ["k0"] }]'
    config = setup(tmp_path, 30, extra=extra, max_records=100)
    append(config, [("k1", b"not json"), ("k0", b"not json either")])
    run_until_caught_up(config)
    expected = sorted({v for v in range(30) if v >= 15 or v % 5 == 0})
    assert sorted(v for c in calls(tmp_path) for v in c["values"] if isinstance(v, int)) == expected
    assert final_sequence(tmp_path) == 32


WINDOW_HANDLER = """
import json
from pathlib import Path
from streamfn import Result

CALLS = Path(__file__).with_name("calls.ndjson")

def handle(batch, context):
    state = context.state or {"count": 0}
    state = {"count": state["count"] + len(batch)}
    with CALLS.open("a") as f:
        f.write(json.dumps({"n": len(batch), "window": context.window_start, "final": context.is_final,
                            "count": state["count"]}) + "\\n")
    items = [{"window": context.window_start, "total": state["count"]}] if context.is_final else []
    return Result(items=items, state=state)
"""


def test_tumbling_window_carries_state_and_ends_with_a_final_call(tmp_path: Path) -> None:
    import time

    config = write_pipeline(tmp_path, WINDOW_HANDLER, shards=1, extra="tumbling_window = 1",
                            batching="max_records = 7")
    size = 1.0
    time.sleep(size - time.time() % size + 0.05)  # start just after a window boundary
    append(config, [("k", b"{}")] * 20)
    time.sleep(size - time.time() % size + 0.05)
    append(config, [("k", b"{}")] * 9)
    time.sleep(size - time.time() % size + FINAL_CALL_GRACE + 0.1)  # the second window is over by now
    run_until_caught_up(config, timeout=30)
    log = [orjson.loads(line) for line in (tmp_path / "calls.ndjson").read_bytes().splitlines()]
    windows = defaultdict(list)
    for call in log:
        windows[call["window"]].append(call)
    first, second = sorted(windows)
    assert second - first == pytest.approx(size)
    for window, total in ((first, 20), (second, 9)):
        counts = [c["count"] for c in windows[window]]
        assert counts == sorted(counts) and counts[-1] == total, "state carried from call to call"
        assert windows[window][-1]["final"] and not any(c["final"] for c in windows[window][:-1])
    totals = sorted(item["total"] for items in output_objects(tmp_path / "out").values() for item in items)
    assert totals == [9, 20]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 120),
    poison=st.sets(st.integers(0, 119), max_size=4),
    flaky=st.sets(st.integers(0, 119), max_size=8),
    partial=st.booleans(),
    bisect=st.booleans(),
    lanes=st.integers(1, 4),
    max_records=st.integers(1, 16),
)
def test_every_record_handled_or_destined_and_per_key_order_holds(
    tmp_path_factory: Any, n: int, poison: set[int], flaky: set[int], partial: bool, bisect: bool, lanes: int,
    max_records: int,
) -> None:
    folder = tmp_path_factory.mktemp("prop")
    retry = f"max_attempts = 1\nbisect_on_error = {'true' if bisect else 'false'}"
    config = setup(folder, n, poison=poison, flaky=flaky, partial=partial, retry=retry, shards=2,
                   max_records=max_records, extra=f"parallelization_factor = {lanes}")
    run_until_caught_up(config, timeout=120)
    done, destined = handled(folder), destined_values(folder)
    assert sorted(done + destined) == list(range(n)), "each record is handled or destined, exactly once"
    assert not set(poison) & set(done)
    by_key: dict[str, list[int]] = defaultdict(list)
    objects = output_objects(folder / "out")
    for key in sorted(objects, key=lambda k: (k.split("/")[1], objects[k][0]["seq"] if objects[k] else 0)):
        for item in objects[key]:
            by_key[item["key"]].append(item["seq"])
    for seqs in by_key.values():
        assert seqs == sorted(seqs)
    assert all(c.position is not None for c in checkpoints(folder).values())
    assert list(itertools.chain.from_iterable(c["values"] for c in calls(folder))) or n == 0
