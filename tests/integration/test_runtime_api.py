"""interface = "runtime-api" end to end through `streamfn run`, with three runtime clients nobody here wrote
or that speak the documented API on their own: awslambdaric (PyPI), aws-lambda-ric (npm) and a custom
`bootstrap` shell script with curl. Each handles a Kinesis-shaped stream (the local log) and a DynamoDB
Streams one (moto): order per shard, a partial batch failure, a call hanging past its timeout (killed,
retried, other shards going on) and a process crashing mid-batch (restarted, nothing lost or doubled).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.aws_support import client, run_caught_up, unique
from tests.integration.test_dynamodb_streams import create_table
from tests.pipelines import REPO, append, output_objects

FIXTURES = REPO / "tests" / "fixtures" / "runtime"
NODE_RIC = REPO / "tests" / "node_modules" / "aws-lambda-ric" / "bin" / "index.mjs"
TIMEOUT = 3.0


def _node_ric_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not NODE_RIC.exists() or not list(NODE_RIC.parent.parent.glob("dist/*.node")):
        return "aws-lambda-ric (an optional npm dependency of tests/) did not build: see .ci/install.sh"
    return None


CLIENTS: dict[str, tuple[str, list[str], str]] = {
    # name: (files to copy, command, handler)
    "awslambdaric": ("app.py", [sys.executable, "-m", "awslambdaric", "app.handler"], "app.handler"),
    "aws-lambda-ric": ("index.js", ["node", str(NODE_RIC), "index.handler"], "index.handler"),
    "bootstrap": ("bootstrap function.sh", ["./bootstrap"], "function.handler"),
}


@pytest.fixture(params=list(CLIENTS))
def runtime(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "aws-lambda-ric" and (why := _node_ric_missing()):
        pytest.skip(why)
    if name == "bootstrap" and (shutil.which("curl") is None or shutil.which("jq") is None):
        pytest.skip("the custom runtime needs curl and jq")
    return name


def write_pipeline(folder: Path, runtime: str, source: str, *, extra: str = "") -> Path:
    files, command, handler = CLIENTS[runtime]
    folder.mkdir(parents=True, exist_ok=True)
    for name in files.split():
        shutil.copy2(FIXTURES / name, folder / name)
    (folder / "markers").mkdir()
    config = folder / "pipeline.toml"
    config.write_text(
        f'name = "rt"\nhandler = "{handler}"\ninterface = "runtime-api"\ncommand = {orjson.dumps(command).decode()}\n'
        f'state_dir = "state"\ntimeout = {TIMEOUT}\nreport_batch_item_failures = true\n{extra}\n'
        f"{source}\n[batching]\nmax_records = 5\n[retry]\ninitial_delay = 0.01\nmax_delay = 0.05\n"
        '[[sinks]]\ntype = "local"\npath = "out"\nfsync = false\n'
    )
    return config


def handled(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Items by shard, in the order of their output objects (batch order) and within each."""
    by_shard: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for key, items in sorted(output_objects(folder / "out").items()):
        by_shard[key.split("/")[1]].extend(items)
    return by_shard


def run(config: Path) -> str:
    env = {"MARKERS": str(config.parent / "markers")}
    proc = subprocess.run([sys.executable, "-m", "streamfn", "run", str(config), "--until-caught-up"],
                          cwd=config.parent, env={**os.environ, **env}, capture_output=True, timeout=120)
    log = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, log[-4000:]
    return log


def test_a_kinesis_shaped_stream_through_each_runtime_client(tmp_path: Path, runtime: str) -> None:
    config = write_pipeline(tmp_path, runtime, '[source]\ntype = "local"\nstream = "s"\nshards = 3')
    acts = {7: "fail", 13: "hang", 21: "crash"}
    records = [(f"key-{v % 6}", orjson.dumps({"v": v, "act": acts.get(v, "")})) for v in range(30)]
    append(config, records)
    log = run(config)

    by_shard = handled(tmp_path)
    values = [item["v"] for items in by_shard.values() for item in items]
    assert sorted(values) == list(range(30))  # nothing lost, nothing written twice
    for items in by_shard.values():  # order per shard (keys keep their shard)
        assert [i["v"] for i in items] == sorted(i["v"] for i in items)
    assert f"handler timed out after {TIMEOUT:g}s; its process was killed" in log
    assert "the handler process" in log and "during the call" in log  # the crash
    assert "partial batch failure" in log
    printed = [line for line in log.splitlines() if "logger=streamfn.handler" in line and "handling" in line]
    assert printed and all("pipeline=rt shard=shard-000" in line and "request_id=" in line for line in printed)
    shard_of = {item["v"]: shard for shard, items in by_shard.items() for item in items}
    hung = shard_of[13]
    after_hang = next(i["t"] for i in by_shard[hung] if i["v"] == 13)
    others = [i for shard, items in by_shard.items() if shard not in (hung, shard_of[21]) for i in items]
    assert others and max(i["t"] for i in others) < after_hang  # other shards did not wait for the hang
    pids = {i["pid"] for i in by_shard[hung]}
    assert len(pids) >= 2  # the hung process was killed and a new one took over
    assert len({i["pid"] for i in others}) <= 3  # warm: one process per lane, reused across batches
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert leftover == []  # no handler process outlives `streamfn run`


async def test_a_dynamodb_streams_shaped_stream_through_each_runtime_client(
    tmp_path: Path, runtime: str, moto_endpoint: str, aws_env: dict[str, str]
) -> None:
    table = unique("rt")
    acts = {3: "fail", 6: "hang", 9: "crash"}
    async with client("dynamodb", moto_endpoint) as ddb:
        await create_table(ddb, table)
        for v in range(12):
            item = {"id": {"S": f"id-{v}"}, "v": {"N": str(v)}}
            if v in acts:
                item["act"] = {"S": acts[v]}
            await ddb.put_item(TableName=table, Item=item)
    source = (f'[source]\ntype = "dynamodb_streams"\ntable = "{table}"\nendpoint_url = "{moto_endpoint}"\n'
              "idle_interval = 0.05\nmax_reads_per_second = 20.0")
    config = write_pipeline(tmp_path, runtime, source)
    await asyncio.to_thread(run_caught_up, config, env={"MARKERS": str(tmp_path / "markers")})

    values = [item["v"] for items in handled(tmp_path).values() for item in items]
    assert values == list(range(12))  # in order, each once
    assert sorted(p.name for p in (tmp_path / "markers").iterdir()) == ["crash-9", "fail-3", "hang-6"]
    log = config.with_suffix(".log").read_text(errors="replace")
    assert "timed out" in log and "during the call" in log


@pytest.mark.parametrize("mode", ["lambda", "runtime-api", "process"])
def test_the_benchmark_measures_each_mode(mode: str) -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks.runtime_api", "--one", mode, "3", "--calls", "5"],
                         cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    result = orjson.loads(out.stdout.strip().splitlines()[-1])
    assert result["mode"] == mode and result["size"] == 3
    assert result["us_per_batch"] > 0 and result["cpu_us_per_batch"] > 0


KAFKA_APP = """
import base64
import json


def handler(event, context):
    with open("events.ndjson", "a") as out:
        out.write(json.dumps(event) + "\\n")
    return {"items": [{"offset": r["offset"], "value": json.loads(base64.b64decode(r["value"]))["n"]}
                      for records in event["records"].values() for r in records]}
"""


async def test_a_kafka_event_reaches_a_runtime_as_lambda_sends_it(kafka_bootstrap: str, tmp_path: Path) -> None:
    import msgspec

    from tests.integration.kafka_util import create_topic, kafka_pipeline, produce, sink_lines
    from tests.integration.test_kafka import drain

    topic = await create_topic(kafka_bootstrap, 1)
    await produce(kafka_bootstrap, topic, [(0, b"k", b'{"n": 1}'), (0, None, b'{"n": 2}')])
    (tmp_path / "kafka_app.py").write_text(KAFKA_APP)
    loaded = kafka_pipeline(tmp_path, kafka_bootstrap, topic, unique("g"), "kafka_app.handler")
    loaded = msgspec.structs.replace(loaded, config=msgspec.structs.replace(
        loaded.config, interface="runtime-api", command=[sys.executable, "-m", "awslambdaric", "kafka_app.handler"]))
    await drain(loaded)
    (event,) = [orjson.loads(line) for line in (tmp_path / "events.ndjson").read_bytes().splitlines()]
    assert event["eventSource"] == "SelfManagedKafka" and event["bootstrapServers"] == kafka_bootstrap
    assert [r["offset"] for r in event["records"][f"{topic}-0"]] == [0, 1]
    assert sink_lines(tmp_path / "out") == [{"offset": 0, "value": 1}, {"offset": 1, "value": 2}]


@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("jq") is None, reason="needs curl and jq")
def test_the_custom_runtime_example_runs(tmp_path: Path) -> None:
    config = REPO / "configs" / "custom_runtime" / "pipeline.toml"
    env = {**os.environ, "STREAMFN_STATE_DIR": str(tmp_path / "state"), "STREAMFN_OUT_DIR": str(tmp_path / "out")}
    for verb in (["validate"], ["produce", "--count", "50"], ["run", "--until-caught-up"]):
        subprocess.run([sys.executable, "-m", "streamfn", verb[0], str(config), *verb[1:]], env=env, check=True,
                       capture_output=True, timeout=60)
    items = [item for items in output_objects(tmp_path / "out").values() for item in items]
    assert len(items) == 50 and all(item["page"].startswith("/") for item in items)
