"""A SAM template imported and run as it is: `streamfn import`, then `streamfn run` on kinesis-mock, with
the imported SQS on-failure destination on moto. The Lambda handler is unmodified."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import orjson

from streamfn.cli import main
from tests.integration.aws_support import client, create_stream, put, run_caught_up, unique

TEMPLATE = """\
AWSTemplateFormatVersion: '2010-09-09'
Transform: AWS::Serverless-2016-10-31
Parameters:
  StreamName:
    Type: String
  QueueName:
    Type: String
Resources:
  Events:
    Type: AWS::Kinesis::Stream
    Properties:
      Name: !Ref StreamName
      ShardCount: 1
  Failed:
    Type: AWS::SQS::Queue
    Properties:
      QueueName: !Ref QueueName
  Processor:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: function/
      Handler: handler.lambda_handler
      Runtime: python3.12
      Events:
        Stream:
          Type: Kinesis
          Properties:
            Stream: !GetAtt Events.Arn
            StartingPosition: TRIM_HORIZON
            BatchSize: 5
            MaximumRetryAttempts: 1
            DestinationConfig:
              OnFailure:
                Type: SQS
                Destination: !GetAtt Failed.Arn
"""

HANDLER = """
import base64
import json
import os


def lambda_handler(event, context):
    values = [json.loads(base64.b64decode(r["kinesis"]["data"]))["v"] for r in event["Records"]]
    if 3 in values:
        raise ValueError("poison")
    with open(os.environ["HANDLED_LOG"], "a") as log:
        log.write("".join(f"{v}\\n" for v in values))
"""


def test_an_imported_template_runs(tmp_path: Path, kinesis_endpoint: str, moto_endpoint: str,
                                   aws_env: dict[str, str]) -> None:
    stream, queue = unique("sam"), unique("sam-failed")
    (tmp_path / "function").mkdir()
    (tmp_path / "function" / "handler.py").write_text(textwrap.dedent(HANDLER))
    (tmp_path / "template.yaml").write_text(TEMPLATE)
    out = tmp_path / "pipelines"
    assert main(["import", str(tmp_path / "template.yaml"), "--out", str(out),
                 "--parameter", f"StreamName={stream}", "--parameter", f"QueueName={queue}"]) == 0

    async def setup() -> str:
        async with client("sqs", moto_endpoint) as sqs:
            url = (await sqs.create_queue(QueueName=queue))["QueueUrl"]
        async with client("kinesis", kinesis_endpoint) as kinesis:
            await create_stream(kinesis, stream, 1)
            await put(kinesis, stream, [(f"k{i}", orjson.dumps({"v": i}), None) for i in range(10)])
        return str(url)

    url = asyncio.run(setup())
    handled = tmp_path / "handled.log"
    run_caught_up(out / "Processor-Stream.yaml", env={
        "AWS_ENDPOINT_URL_KINESIS": kinesis_endpoint, "AWS_ENDPOINT_URL_SQS": moto_endpoint,
        "HANDLED_LOG": str(handled)})
    assert sorted(int(v) for v in handled.read_text().split()) == [5, 6, 7, 8, 9]

    async def failures() -> list[dict[str, Any]]:
        async with client("sqs", moto_endpoint) as sqs:
            answer = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        return [orjson.loads(m["Body"]) for m in answer.get("Messages", [])]

    (doc,) = asyncio.run(failures())
    assert doc["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert doc["requestContext"]["approximateInvokeCount"] == 2
    assert doc["KinesisBatchInfo"]["batchSize"] == 5
