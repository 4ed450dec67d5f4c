"""What a handler prints and logs, and how it fails, as an operator reads it on stderr of a real
``streamfn run``: whole per call between START/END/REPORT, tagged, never mixed with another shard's."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.logfmt import parse_logfmt
from tests.pipelines import REPO, append, output_objects, write_pipeline

#: Two shards' calls overlap in their threads: each writes one line in three pieces, sleeping between
#: them, so without capture the pieces of the two shards would mix on the same line.
CHATTY = """
import logging, sys, time

def handle(batch, context):
    rid = context.aws_request_id
    sys.stdout.write(f"begin {batch.shard_id} ")
    time.sleep(0.01)
    sys.stdout.write("middle ")
    time.sleep(0.01)
    print(f"end {batch.shard_id} rid={rid}")
    print(f"to stderr {batch.shard_id}", file=sys.stderr)
    logging.getLogger("user.code").warning("handled %d records of %s", len(batch), batch.shard_id)
    return [{"v": r.json()["v"], "rid": rid} for r in batch]
"""

#: The same as an async handler: its calls run in the lanes' own tasks, interleaved by the event loop.
CHATTY_ASYNC = CHATTY.replace("import logging, sys, time", "import asyncio, logging, sys").replace(
    "def handle", "async def handle").replace("time.sleep(0.01)", "await asyncio.sleep(0.01)")

FAILS_TWICE = """
import sys

def check(record):
    if record.json()["v"] == 0:
        raise ValueError(f"record {record.sequence} is bad")

def handle(batch, context):
    print(f"rid={context.aws_request_id} attempt={context.attempt}")
    if context.attempt < 2:
        for record in batch:
            check(record)
    return [r.json() for r in batch]
"""

SILENT = "def handle(batch, context):\n    return [r.json() for r in batch]\n"


def records(n: int) -> list[tuple[str, bytes]]:
    return [(f"k{i}", orjson.dumps({"v": i})) for i in range(n)]


def run(config: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "streamfn", *flags, "run", str(config), "--until-caught-up"],
                            cwd=config.parent, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result


def json_lines(stderr: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stderr.splitlines()]  # raises on any line that is not JSON


def handler_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if "request_id" in line]


@pytest.mark.parametrize("handler", [CHATTY, CHATTY_ASYNC], ids=["thread", "async"])
def test_two_shards_printing_at_once_are_written_whole_per_call_and_tagged(tmp_path: Path, handler: str) -> None:
    config = write_pipeline(tmp_path, handler, shards=2, batching="max_records = 5")
    append(config, records(40))
    lines = json_lines(run(config, "--log-format", "json").stderr)
    tagged = handler_lines(lines)
    by_call: dict[str, list[int]] = defaultdict(list)
    for index, line in enumerate(tagged):
        by_call[line["request_id"]].append(index)
    reports = [line for line in tagged if line["message"].startswith("REPORT ")]
    assert len(reports) == len(by_call) >= 8, "one block per call, 4+ calls per shard"
    for request_id, indexes in by_call.items():
        block = [tagged[i] for i in indexes]
        assert indexes == list(range(indexes[0], indexes[0] + len(indexes))), "a call's lines are not interleaved"
        shard = block[0]["shard"]
        assert all(line["shard"] == shard and line["pipeline"] == "p" for line in block)
        assert [line["message"] for line in block] == [
            f"START RequestId: {request_id}",
            f"begin {shard} middle end {shard} rid={request_id}",  # whole: pieces of one line, one line
            f"to stderr {shard}",
            f"handled {block[0]['records']} records of {shard}",
            f"END RequestId: {request_id}",
            block[-1]["message"],
        ]
        assert [line.get("stream") for line in block[1:3]] == ["stdout", "stderr"]
        assert block[3]["logger"] == "user.code" and block[3]["level"] == "warning"
        assert block[-1]["message"].startswith(f"REPORT RequestId: {request_id} Duration: ")
        assert block[-1]["duration_ms"] >= 15 and block[-1]["status"] == "ok"
        assert block[0]["records"] >= 1 and block[0]["attempt"] == 0
    written = {item["rid"] for items in output_objects(tmp_path / "out").values() for item in items}
    assert written == set(by_call), "the request id in the logs is the one the handler saw"


def test_text_format_blocks_are_valid_logfmt(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, CHATTY, shards=2, batching="max_records = 20")
    append(config, records(20))
    pairs = [parse_logfmt(line) for line in run(config).stderr.splitlines()]
    printed = [p for p in pairs if p.get("stream") == "stdout"]
    assert len(printed) >= 2 and all(p["msg"].startswith("begin ") and p["request_id"] for p in printed)


def test_a_failure_is_logged_with_the_handlers_traceback_once_then_by_its_id(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, FAILS_TWICE, shards=1, batching="max_records = 10")
    append(config, records(10))
    lines = json_lines(run(config, "--log-format", "json").stderr)
    failures = [line for line in lines if line["message"].startswith("handler failed")]
    assert len(failures) == 2
    first, second = failures
    printed = {line["message"].split()[1]: line["request_id"] for line in lines if line.get("stream") == "stdout"}
    assert printed["attempt=0"] == first["request_id"] and printed["attempt=1"] == second["request_id"]
    for attempt, failure in enumerate(failures):
        assert {k: failure[k] for k in ("pipeline", "shard", "first_sequence", "last_sequence", "records",
                                         "attempt")} == {"pipeline": "p", "shard": "shard-0000",
                                                         "first_sequence": "1", "last_sequence": "10",
                                                         "records": 10, "attempt": attempt}
        assert failure["level"] == "error" and "ValueError: record 1 is bad" in failure["error"]
    trace = first["exception"]
    assert trace.startswith("Traceback (most recent call last):\n")
    assert "in handle\n" in trace and "in check\n" in trace and trace.endswith("ValueError: record 1 is bad")
    assert "streamfn" not in trace.replace(str(tmp_path), ""), "the handler's frames only, not the engine's"
    assert "exception" not in second, "the same traceback is not printed again within a minute"
    assert second["traceback_id"] == first["traceback_id"] and second["traceback_repeat"] == 1
    assert output_objects(tmp_path / "out"), "the third attempt succeeded"


def test_output_of_a_call_past_its_timeout_is_marked_late(tmp_path: Path) -> None:
    slow = ("import time\n\ndef handle(batch, context):\n    if context.attempt == 0:\n        time.sleep(1.5)\n"
            "        print('woke up')\n    return []\n")
    config = write_pipeline(tmp_path, slow, shards=1, extra="timeout = 0.5")
    append(config, records(1))
    lines = json_lines(run(config, "--log-format", "json").stderr)
    timed_out = next(line for line in lines if line["message"].startswith("handler failed"))
    assert "timed out" in timed_out["error"] and "exception" not in timed_out
    late = next(line for line in lines if line["message"] == "woke up")
    assert late["late"] is True and late["request_id"] == timed_out["request_id"]


def test_quiet_calls_write_nothing_unless_every_call_is_framed(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path / "quiet", SILENT, shards=2)
    append(config, records(20))
    assert not handler_lines(json_lines(run(config, "--log-format", "json").stderr))
    config = write_pipeline(tmp_path / "framed", SILENT, shards=2, extra='handler_output = "capture_all"')
    append(config, records(20))
    tagged = handler_lines(json_lines(run(config, "--log-format", "json").stderr))
    reports = [line for line in tagged if line["message"].startswith("REPORT ")]
    assert len(reports) >= 2 and len(tagged) == 3 * len(reports), "START, END, REPORT for every call"
    assert {line["shard"] for line in reports} == {"shard-0000", "shard-0001"}


def test_off_leaves_prints_alone(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, CHATTY, shards=1, extra='handler_output = "off"')
    append(config, records(5))
    result = run(config, "--log-format", "json")
    assert "begin shard-0000 middle end shard-0000 rid=" in result.stdout
    assert "to stderr shard-0000" in result.stderr.splitlines()
    assert "START RequestId" not in result.stderr


def test_a_handler_that_fails_to_import_shows_its_traceback_in_validate_and_run(tmp_path: Path) -> None:
    broken = "import json\n\n\ndef setup():\n    raise RuntimeError('no settings found')\n\n\nsetup()\n"
    config = write_pipeline(tmp_path, broken, shards=1, handler_module="broken_handler")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for verb in (["validate", str(config)], ["run", str(config), "--until-caught-up"]):
        result = subprocess.run([sys.executable, "-m", "streamfn", "--log-format", "json", *verb], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 2, result.stderr
        lines = json_lines(result.stderr)
        failed = next(line for line in lines if line["message"] == "handler import failed")
        assert failed["handler"] == "broken_handler:handle" and failed["file"] == str(config)
        trace = failed["exception"]
        assert 'broken_handler.py", line 8, in <module>' in trace and 'line 5, in setup' in trace
        assert trace.endswith("RuntimeError: no settings found") and "importlib" not in trace
        assert any(line["level"] == "error" and "field `handler`" in line["message"] for line in lines)
