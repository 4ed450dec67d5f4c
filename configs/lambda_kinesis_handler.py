"""A plain AWS Lambda handler for Kinesis, as it would be deployed to Lambda: no streamfn imports."""

import base64
import json


def lambda_handler(event, context):
    failures = []
    for record in event["Records"]:
        try:
            payload = json.loads(base64.b64decode(record["kinesis"]["data"]))
            print(json.dumps({"page": payload.get("page"), "seq": record["kinesis"]["sequenceNumber"]}))
        except ValueError:
            failures.append({"itemIdentifier": record["kinesis"]["sequenceNumber"]})
    return {"batchItemFailures": failures}
