"""Lambda's DynamoDB Streams filters on moto: patterns look into the change under ``dynamodb``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from tests.integration.aws_support import client, run_caught_up, unique
from tests.integration.test_dynamodb_streams import changes, create_table

HANDLER = """
import json
import os

def handle(batch, context):
    with open(os.environ["HANDLED_LOG"], "a") as log:
        for record in batch:
            log.write(json.dumps({"event": record.attributes["eventName"], "keys": record.json()["Keys"]}) + "\\n")
    return []
"""


async def test_a_filter_on_the_change_keeps_only_matching_records(
    tmp_path: Path, moto_endpoint: str, aws_env: dict[str, str]
) -> None:
    table = unique("orders")
    async with client("dynamodb", moto_endpoint) as ddb:
        await create_table(ddb, table)
        await changes(ddb, table)  # INSERT a, INSERT b, MODIFY a, REMOVE b
    (tmp_path / "ddb_handler.py").write_text(HANDLER)
    config = tmp_path / "pipeline.toml"
    config.write_text(
        'name = "filtered"\nhandler = "ddb_handler:handle"\n'
        'filters = [\'{"eventName": ["INSERT", "MODIFY"], "dynamodb": {"Keys": {"id": {"S": ["a"]}}}}\']\n'
        f'[source]\ntype = "dynamodb_streams"\ntable = "{table}"\nendpoint_url = "{moto_endpoint}"\n'
        "idle_interval = 0.05\nmax_reads_per_second = 20.0\n"
    )
    log = tmp_path / "handled.log"
    await asyncio.to_thread(run_caught_up, config, env={"HANDLED_LOG": str(log)})
    seen = [orjson.loads(line) for line in log.read_text().splitlines()]
    assert seen == [{"event": "INSERT", "keys": {"id": {"S": "a"}}}, {"event": "MODIFY", "keys": {"id": {"S": "a"}}}]
