"""A pipeline whose only AWS settings are its ``[aws]`` section: a DynamoDB Streams source and an S3 sink on
moto, in a region other than the environment's, signed with a named profile, run to the end of the stream."""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from tests.integration.aws_support import run_caught_up, unique
from tests.integration.test_dynamodb_streams import changes, create_table

#: Not the environment's (the test session sets us-east-1): moto keeps each region's tables and buckets apart.
REGION = "eu-west-2"

HANDLER = """
from streamfn.connectors.dynamodb.dynamodb_json import item_from_dynamodb

def handle(batch, context):
    return [{"id": item_from_dynamodb(r.json()["Keys"])["id"], "event": r.attributes["eventName"]} for r in batch]
"""


@contextlib.asynccontextmanager
async def client(service: str, endpoint: str) -> AsyncIterator[Any]:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    async with get_session().create_client(service, endpoint_url=endpoint, region_name=REGION,
                                           aws_access_key_id="testing", aws_secret_access_key="testing",
                                           config=AioConfig(s3={"addressing_style": "path"})) as made:
        yield made


async def test_only_the_aws_section_names_endpoint_region_and_profile(
    tmp_path: Path, moto_endpoint: str, aws_env: dict[str, str]
) -> None:
    table, bucket = unique("orders"), unique("out")
    async with client("dynamodb", moto_endpoint) as ddb:
        await create_table(ddb, table)
        await changes(ddb, table)
    async with client("s3", moto_endpoint) as s3:
        await s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    (tmp_path / "app.py").write_text(textwrap.dedent(HANDLER))
    (tmp_path / "aws-config").write_text("[profile streamfn-it]\noutput = json\n")
    (tmp_path / "aws-credentials").write_text(
        "[streamfn-it]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    config = tmp_path / "pipeline.toml"
    config.write_text(textwrap.dedent(f"""
        name = "changes"
        handler = "app:handle"
        state_dir = "state"
        [aws]
        region = "{REGION}"
        endpoint_url = "{moto_endpoint}"
        profile = "streamfn-it"
        [source]
        type = "dynamodb_streams"
        table = "{table}"
        idle_interval = 0.05
        max_reads_per_second = 20.0
        [[sinks]]
        type = "s3"
        bucket = "{bucket}"
        [retry]
        initial_delay = 0.01
        max_delay = 0.05
    """))
    await asyncio.to_thread(run_caught_up, config, env={
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
    })
    written: list[dict[str, Any]] = []
    async with client("s3", moto_endpoint) as s3:
        listed = await s3.list_objects_v2(Bucket=bucket)
        for key in sorted(item["Key"] for item in listed.get("Contents", [])):
            answer = await s3.get_object(Bucket=bucket, Key=key)
            async with answer["Body"] as body:
                written += [orjson.loads(line) for line in (await body.read()).splitlines()]
    assert written == [{"id": "a", "event": "INSERT"}, {"id": "b", "event": "INSERT"},
                       {"id": "a", "event": "MODIFY"}, {"id": "b", "event": "REMOVE"}]
