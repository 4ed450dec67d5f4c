"""An unmodified AWS Lambda Kinesis handler runs on streamfn as it would on Lambda."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.pipelines import append, run_until_caught_up, write_pipeline

# Written exactly as for AWS Lambda: the event shape, base64 data, and batchItemFailures.
LAMBDA_HANDLER = '''
import base64
import json
import os

OUT = os.path.join(os.path.dirname(__file__), "decoded.ndjson")
SEEN = set()

def handle(event, context):
    assert context.get_remaining_time_in_millis() > 0
    failures = []
    with open(OUT, "a") as out:
        for record in event["Records"]:
            assert record["eventSource"] == "aws:kinesis"
            assert record["eventID"].endswith(":" + record["kinesis"]["sequenceNumber"])
            payload = json.loads(base64.b64decode(record["kinesis"]["data"]))
            key = (record["eventID"])
            if payload.get("poison") and key not in SEEN:
                SEEN.add(key)
                failures.append({"itemIdentifier": record["kinesis"]["sequenceNumber"]})
                break
            out.write(json.dumps({"v": payload["v"], "pk": record["kinesis"]["partitionKey"],
                                  "t": record["kinesis"]["approximateArrivalTimestamp"]}) + "\\n")
    return {"batchItemFailures": failures}
'''


def test_unmodified_lambda_kinesis_handler(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, LAMBDA_HANDLER, shards=2, sinks="",
                            extra='interface = "lambda"\nreport_batch_item_failures = true')
    records = [(f"user-{i % 4}", orjson.dumps({"v": i, "poison": i % 37 == 5})) for i in range(200)]
    append(config, records)
    run_until_caught_up(config)
    lines = [orjson.loads(line) for line in (tmp_path / "decoded.ndjson").read_bytes().splitlines()]
    values = sorted(line["v"] for line in lines)
    # A poison record fails once: Lambda's rule moves the checkpoint before it and retries from it,
    # so each record is decoded exactly once here (records before it in the call were not repeated).
    assert values == list(range(200))
    assert all(line["pk"] == f"user-{line['v'] % 4}" for line in lines)
    assert all(isinstance(line["t"], float) for line in lines)
