"""DynamoDB Streams pipelines end to end on moto: table changes reach an unmodified Lambda handler in
order, a native handler's items land in a second table, and a rerun resumes from the checkpoint."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import orjson

from tests.integration.aws_support import client, run_caught_up, unique
from tests.integration.test_dynamodb_streams import changes, create_table

LAMBDA_HANDLER = """
import json
import os

def handler(event, context):
    with open(os.environ["HANDLED_LOG"], "a") as log:
        for record in event["Records"]:
            change = record["dynamodb"]
            log.write(json.dumps({"event": record["eventName"], "keys": change["Keys"],
                                  "new": change.get("NewImage"), "old": change.get("OldImage"),
                                  "arn": record["eventSourceARN"], "source": record["eventSource"],
                                  "seq": change["SequenceNumber"]}) + "\\n")
"""

NATIVE_HANDLER = """
from streamfn.connectors.dynamodb.dynamodb_json import item_from_dynamodb

def handle(batch, context):
    out = []
    for record in batch:
        change = record.json()
        name = record.attributes["eventName"]
        image = change.get("NewImage") or change.get("OldImage")
        out.append({"id": item_from_dynamodb(change["Keys"])["id"], "last_event": name,
                    "n": item_from_dynamodb(image).get("n", -1), "seq": record.sequence})
    return out
"""


def pipeline(folder: Path, moto: str, table: str, *, interface: str, handler: str, sinks: str = "",
             leases: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ddb_handler.py").write_text(textwrap.dedent(handler))
    function = "handler" if interface == "lambda" else "handle"
    config = folder / "pipeline.toml"
    config.write_text(
        f'name = "changes"\nhandler = "ddb_handler:{function}"\ninterface = "{interface}"\nstate_dir = "state"\n'
        f'[source]\ntype = "dynamodb_streams"\ntable = "{table}"\nendpoint_url = "{moto}"\n'
        "idle_interval = 0.05\nmax_reads_per_second = 20.0\n"
        "[batching]\nmax_records = 3\n[retry]\ninitial_delay = 0.01\nmax_delay = 0.05\n" + sinks
        + (f'[checkpoints]\ntype = "dynamodb"\ntable = "{unique("leases")}"\nendpoint_url = "{moto}"\n'
           "take_interval = 0.5\nshard_sync_interval = 1.0\n" if leases else "")
    )
    return config


async def test_insert_modify_remove_reach_a_lambda_handler(
    tmp_path: Path, moto_endpoint: str, aws_env: dict[str, str]
) -> None:
    table = unique("orders")
    async with client("dynamodb", moto_endpoint) as ddb:
        arn = await create_table(ddb, table)
        await changes(ddb, table)
    # Checkpoints in the lease table (the local store is covered by the Kinesis tests).
    config = pipeline(tmp_path, moto_endpoint, table, interface="lambda", handler=LAMBDA_HANDLER, leases=True)
    log = tmp_path / "handled.log"
    await asyncio.to_thread(run_caught_up, config, env={"HANDLED_LOG": str(log)})
    seen = [orjson.loads(line) for line in log.read_text().splitlines()]
    assert [(s["event"], s["keys"]) for s in seen] == [
        ("INSERT", {"id": {"S": "a"}}), ("INSERT", {"id": {"S": "b"}}),
        ("MODIFY", {"id": {"S": "a"}}), ("REMOVE", {"id": {"S": "b"}}),
    ]
    assert seen[2]["old"]["n"] == {"N": "1"} and seen[2]["new"]["n"] == {"N": "1.5"}
    assert seen[3]["new"] is None and seen[3]["old"]["id"] == {"S": "b"}
    assert {s["arn"] for s in seen} == {arn} and {s["source"] for s in seen} == {"aws:dynamodb"}
    # New changes after a restart: only those are handled.
    async with client("dynamodb", moto_endpoint) as ddb:
        await ddb.put_item(TableName=table, Item={"id": {"S": "c"}, "n": {"N": "3"}})
    await asyncio.to_thread(run_caught_up, config, env={"HANDLED_LOG": str(log)})
    again = [orjson.loads(line) for line in log.read_text().splitlines()]
    assert again[:4] == seen and [(s["event"], s["keys"]) for s in again[4:]] == [("INSERT", {"id": {"S": "c"}})]


async def test_native_handler_materializes_a_table_through_the_dynamodb_sink(
    tmp_path: Path, moto_endpoint: str, aws_env: dict[str, str]
) -> None:
    table, view = unique("orders"), unique("view")
    async with client("dynamodb", moto_endpoint) as ddb:
        await create_table(ddb, table)
        await create_table(ddb, view, stream=False)
        await changes(ddb, table)
    sinks = (f'[[sinks]]\ntype = "dynamodb"\ntable = "{view}"\nendpoint_url = "{moto_endpoint}"\n'
             'version_attribute = "seq"\n')
    config = pipeline(tmp_path, moto_endpoint, table, interface="native", handler=NATIVE_HANDLER, sinks=sinks)
    await asyncio.to_thread(run_caught_up, config)
    async with client("dynamodb", moto_endpoint) as ddb:
        items = (await ddb.scan(TableName=view, ConsistentRead=True))["Items"]
    state = {i["id"]["S"]: (i["last_event"]["S"], i["n"]["N"]) for i in items}
    assert state == {"a": ("MODIFY", "1.5"), "b": ("REMOVE", "2")}
