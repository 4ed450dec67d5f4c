"""streamfn.testing through its public face only: ``run_records``/``check_file`` and ``streamfn test``.

The in-memory parts themselves join the contract suites (tests/contract/), so they keep the same
contract as the real sources, sinks, stores and destinations.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfn import testing
from streamfn.errors import HandlerError
from streamfn.protocols.source import ShardInfo, StartingPosition
from streamfn.records import Position

HANDLERS = '''
import json

def double(batch, context):
    return [{"n": r.json()["n"] * 2, "key": r.partition_key} for r in batch]

def explode(batch, context):
    raise RuntimeError("no good")

def lambda_style(event, context):
    return [{"source": r["eventSource"], "arn": r["eventSourceARN"], "key": r["kinesis"]["partitionKey"]}
            for r in event["Records"]]

def event(event, context):
    return [event]

def fail_odd(batch, context):
    return {"batchItemFailures": [{"itemIdentifier": r.identifier} for r in batch if r.json()["n"] % 2]}
'''


def pipeline(folder: Path, handler: str, extra: str = "", source: str = 'type = "local"\nstream = "s"') -> Path:
    (folder / "handlers.py").write_text(HANDLERS)
    path = folder / "pipeline.toml"
    path.write_text(f'name = "t"\nhandler = "handlers:{handler}"\n{extra}\n[source]\n{source}\n'
                    '[[sinks]]\ntype = "local"\npath = "out"\n')
    return path


def lines(path: Path, items: Sequence[object]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(item) + b"\n" for item in items))
    return path


NUMBERS = [{"n": n} for n in range(1, 6)]


async def test_run_records_gives_the_sink_items_in_order_and_touches_no_state(tmp_path: Path) -> None:
    config = pipeline(tmp_path, "double")
    result = await testing.run_records(config, [(f"k{i}", orjson.dumps(item)) for i, item in enumerate(NUMBERS)])
    assert result.items == [{"n": 2 * n, "key": f"k{n - 1}"} for n in range(1, 6)]
    assert result.failures == []
    assert not (tmp_path / "state").exists() and not (tmp_path / "out").exists()


async def test_filters_and_batch_size_of_the_pipeline_apply(tmp_path: Path) -> None:
    config = pipeline(tmp_path, "double", 'filters = [{data = {n = [{numeric = [">", 2]}]}}]\n'
                                          "[batching]\nmax_records = 2\n")
    result = await testing.run_records(config, [("k", orjson.dumps(item)) for item in NUMBERS])
    assert [item["n"] for item in result.items] == [6, 8, 10]
    assert [len(batch.items) for batch in result.batches] == [2, 1]


async def test_a_lambda_handler_gets_the_configured_sources_event_shape(tmp_path: Path) -> None:
    config = pipeline(tmp_path, "lambda_style", 'interface = "lambda"',
                      source='type = "kinesis"\nstream = "orders"\nregion = "eu-west-1"')
    result = await testing.run_records(config, [("user-1", b'{"n": 1}')])
    assert result.items == [{"source": "aws:kinesis", "arn": "arn:aws:kinesis:eu-west-1:000000000000:stream/orders",
                             "key": "user-1"}]


async def test_a_dynamodb_streams_pipeline_takes_event_records_or_their_change(tmp_path: Path) -> None:
    config = pipeline(tmp_path, "event", 'interface = "lambda"', source='type = "dynamodb_streams"\ntable = "orders"')
    change = {"Keys": {"id": {"S": "a"}}, "NewImage": {"id": {"S": "a"}, "n": {"N": "1"}}}
    removed = {"eventName": "REMOVE", "dynamodb": {"Keys": {"id": {"S": "b"}}}}
    result = await testing.run_records(config, [("", orjson.dumps(change)), ("", orjson.dumps(removed))])
    [records] = [item["Records"] for item in result.items]
    assert [r["eventName"] for r in records] == ["INSERT", "REMOVE"]
    assert records[0]["dynamodb"] == change
    assert records[0]["eventSourceARN"] == "arn:aws:dynamodb:us-east-1:000000000000:table/orders/stream/local"


async def test_a_kafka_pipeline_gets_kafkas_event_with_topic_partition_and_offsets(tmp_path: Path) -> None:
    config = pipeline(tmp_path, "event", 'interface = "lambda"\n[checkpoints]\ntype = "kafka"',
                      source='type = "kafka"\nbootstrap_servers = "b:9092"\ntopic = "orders"\ngroup_id = "g"')
    result = await testing.run_records(config, [("k", b'{"n": 1}'), ("k", b'{"n": 2}')])
    [event] = result.items
    assert event["eventSource"] == "SelfManagedKafka" and event["bootstrapServers"] == "b:9092"
    [(partition, records)] = event["records"].items()
    assert partition.startswith("orders-")
    assert [(r["topic"], r["offset"], r["key"]) for r in records] == [("orders", 0, "aw=="), ("orders", 1, "aw==")]


async def test_a_handler_that_keeps_failing_without_a_retry_limit_is_reported(tmp_path: Path) -> None:
    config = pipeline(tmp_path, "explode")
    with pytest.raises(HandlerError, match="no good"):
        await testing.run_records(config, [("k", b'{"n": 1}')], time_limit=30)


async def test_with_a_retry_limit_failures_reach_the_on_failure_destination(tmp_path: Path) -> None:
    config = pipeline(tmp_path, "fail_odd", "report_batch_item_failures = true\n"
                      "[retry]\nmax_attempts = 0\ninitial_delay = 0.01\n"
                      '[on_failure]\ntype = "local"\npath = "failed"')
    result = await testing.run_records(config, [("k", orjson.dumps(item)) for item in NUMBERS])
    assert result.items == []
    [failure] = result.failures
    assert failure.condition == "RetryAttemptsExhausted"
    assert [r.json()["n"] for r in failure.records] == [1, 2, 3, 4, 5]  # from the first failed item on
    assert result.failure_documents[0]["KinesisBatchInfo"]["batchSize"] == 5
    assert not (tmp_path / "failed").exists()


def streamfn(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamfn", "--log-level", "warning", "test", *map(str, args)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_cli_passes_on_expected_output_and_shows_a_diff_otherwise(tmp_path: Path) -> None:
    config = pipeline(tmp_path, "double")
    records = lines(tmp_path / "in.jsonl", NUMBERS)
    good = lines(tmp_path / "good.jsonl", [{"key": str(n - 1), "n": 2 * n} for n in range(1, 6)])
    passed = streamfn(config, "--input", records, "--expect", good)
    assert passed.returncode == 0, passed.stderr
    assert "5 items as expected" in passed.stdout

    bad = lines(tmp_path / "bad.jsonl", [{"key": str(n - 1), "n": 2 * n} for n in range(1, 5)] + [{"n": 0}])
    failed = streamfn(config, "--input", records, "--expect", bad)
    assert failed.returncode == 1
    assert '-{"n":0}' in failed.stdout and '+{"key":"4","n":10}' in failed.stdout

    unordered = lines(tmp_path / "unordered.jsonl", [{"key": str(n - 1), "n": 2 * n} for n in range(5, 0, -1)])
    assert streamfn(config, "--input", records, "--expect", unordered).returncode == 1
    assert streamfn(config, "--input", records, "--expect", unordered, "--unordered").returncode == 0


def test_the_cli_update_writes_the_expectation_and_keys_come_from_a_field(tmp_path: Path) -> None:
    config = pipeline(tmp_path, "double")
    records = lines(tmp_path / "in.jsonl", [{"n": 1, "user": "ann"}, {"n": 2, "user": "bob"}])
    expect = tmp_path / "expected.jsonl"
    written = streamfn(config, "--input", records, "--expect", expect, "--key-field", "user", "--update")
    assert written.returncode == 0, written.stderr
    assert testing.read_expected(expect) == [{"n": 2, "key": "ann"}, {"n": 4, "key": "bob"}]
    assert testing.check_file(config, records, expect, key_field="user").passed


def test_the_cli_names_a_bad_input_line(tmp_path: Path) -> None:
    config = pipeline(tmp_path, "double")
    records = tmp_path / "in.jsonl"
    records.write_text('{"n": 1}\nnot json\n')
    answer = streamfn(config, "--input", records, "--expect", lines(tmp_path / "e.jsonl", []))
    assert answer.returncode == 1
    assert "line 2" in answer.stderr


def test_the_public_names_are_the_ones_meant() -> None:
    assert sorted(testing.__all__) == [
        "Comparison", "MemoryCheckpointStore", "MemoryDestination", "MemoryShardReader", "MemorySink",
        "MemorySource", "RunResult", "check_file", "compare", "read_expected", "read_records", "run_file",
        "run_records", "write_expected",
    ]
    assert all(hasattr(testing, name) for name in testing.__all__)


@given(st.lists(st.integers(0, 2), max_size=30), st.integers(0, 35))
async def test_a_memory_reader_resumes_strictly_after_any_position(targets: list[int], after: int) -> None:
    source = testing.MemorySource("s", 3)
    for index, target in enumerate(targets):
        source.append(b"%d" % index, shard_id=f"shard-{target:04d}")
    shard = ShardInfo("shard-0000")
    reader = source.reader(shard, Position(after), StartingPosition())
    got = (await reader.read(100, 0)).records
    assert got == [r for r in source.shards["shard-0000"] if r.sequence > after]
    at = source.reader(shard, None, StartingPosition("at_sequence", position=Position(after)))
    assert (await at.read(100, 0)).records == [r for r in source.shards["shard-0000"] if r.sequence >= after]


def test_the_readme_example_under_configs_passes() -> None:
    configs = Path(__file__).resolve().parents[2] / "configs"
    answer = streamfn(configs / "quickstart.toml", "--input", configs / "test" / "quickstart.input.jsonl",
                      "--expect", configs / "test" / "quickstart.expected.jsonl", "--key-field", "user_id")
    assert answer.returncode == 0, answer.stdout + answer.stderr
