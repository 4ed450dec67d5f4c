"""Output a sink cannot encode goes through the failure policy (issue 10 item 5), end to end."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import orjson

from tests.pipelines import append, output_objects, run_until_caught_up, write_pipeline

DECIMAL_FOR_THREE = """
from decimal import Decimal

def handle(batch, context):
    return [{"v": Decimal("3.0") if r.json()["v"] == 3 else r.json()["v"]} for r in batch]
"""


def test_an_unencodable_item_sends_its_batch_to_on_failure_and_the_shard_moves_on(tmp_path: Path) -> None:
    config = write_pipeline(
        tmp_path, DECIMAL_FOR_THREE, shards=1, batching="max_records = 1",
        extra="[on_failure]\ntype = 'local'\npath = 'dlq'\n",
        sinks="max_attempts = 1\n[[sinks]]\ntype = 'local'\npath = 'out'\nfsync = false\n",
    )
    append(config, [("k", orjson.dumps({"v": i})) for i in range(6)])
    run_until_caught_up(config, timeout=5)
    written = sorted(item["v"] for items in output_objects(tmp_path / "out").values() for item in items)
    assert written == [0, 1, 2, 4, 5]
    [failure] = [json.loads(p.read_bytes()) for p in (tmp_path / "dlq").rglob("*.json")]
    assert failure["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert "cannot be written as JSON" in failure["errorMessage"]
    assert [json.loads(base64.b64decode(r["data"]))["v"] for r in failure["records"]] == [3]
