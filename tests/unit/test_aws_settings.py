"""The pipeline's ``[aws]`` section: a part's own region and endpoint win, then the section's, then the
environment's; the section's profile signs every part's requests."""

from __future__ import annotations

import contextlib
import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfn.aws import AwsClient, AwsSettings
from streamfn.cli import main
from streamfn.components import BuildContext
from streamfn.config import load_pipeline
from streamfn.connectors.dynamodb.sink import DynamoDBSinkConfig
from streamfn.connectors.dynamodb_streams.source import DynamoDBStreamsSourceConfig
from streamfn.connectors.kinesis.destination import KinesisDestinationConfig
from streamfn.connectors.kinesis.source import KinesisSource, KinesisSourceConfig
from streamfn.connectors.lease_table.store import DynamoDBCheckpointStoreConfig
from streamfn.connectors.s3.destination import S3DestinationConfig
from streamfn.connectors.s3.sink import S3SinkConfig
from streamfn.connectors.sns.destination import SnsDestinationConfig
from streamfn.connectors.sqs.destination import SqsDestinationConfig
from streamfn.errors import ConfigError, SinkError

Build = Callable[[str | None, str | None, float | None, BuildContext], AwsClient]

#: Every AWS part: its config with (region, endpoint_url, request_timeout) built for a context, the client it
#: talks through, and its request timeout when neither it nor the section sets one.
PARTS: dict[str, tuple[Build, float]] = {
    "kinesis source": (lambda r, e, t, ctx: KinesisSourceConfig(
        stream="s", region=r, endpoint_url=e, request_timeout=t).build(ctx).aws, 30.0),
    "dynamodb_streams source": (lambda r, e, t, ctx: DynamoDBStreamsSourceConfig(
        table="t", region=r, endpoint_url=e, request_timeout=t).build(ctx).aws, 30.0),
    "s3 sink": (lambda r, e, t, ctx: S3SinkConfig(
        bucket="b", region=r, endpoint_url=e, request_timeout=t).build(ctx).aws, 60.0),
    "dynamodb sink": (lambda r, e, t, ctx: DynamoDBSinkConfig(
        table="t", region=r, endpoint_url=e, request_timeout=t).build(ctx).aws, 30.0),
    "lease table": (lambda r, e, t, ctx: DynamoDBCheckpointStoreConfig(
        region=r, endpoint_url=e, request_timeout=t).build(ctx).table.aws, 5.0),  # failover_time / 2
    "s3 destination": (lambda r, e, t, ctx: S3DestinationConfig(
        bucket="b", region=r, endpoint_url=e, request_timeout=t).build(ctx)._client, 30.0),
    "kinesis destination": (lambda r, e, t, ctx: KinesisDestinationConfig(
        stream="s", region=r, endpoint_url=e, request_timeout=t).build(ctx)._client, 30.0),
    "sqs destination": (lambda r, e, t, ctx: SqsDestinationConfig(
        queue="q", region=r, endpoint_url=e, request_timeout=t).build(ctx)._client, 30.0),
}


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Only ``values`` among the AWS_* variables; no shared AWS files unless named."""
    with mock.patch.dict(os.environ):
        for key in [key for key in os.environ if key.startswith("AWS_")]:
            del os.environ[key]
        os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
        os.environ.update(values)
        yield


def context(aws: AwsSettings) -> BuildContext:
    return BuildContext(pipeline="p", config_dir=Path("."), state_dir=Path("."), aws=aws)


@settings(max_examples=60, deadline=None)
@given(part=st.sampled_from(sorted(PARTS)), own=st.booleans(), section=st.booleans(), env=st.booleans())
def test_the_part_wins_then_the_section_then_the_environment(part: str, own: bool, section: bool,
                                                             env: bool) -> None:
    aws = AwsSettings(region="eu-west-2" if section else None,
                      endpoint_url="http://section:2" if section else None, request_timeout=7.0 if section else None)
    build, default_timeout = PARTS[part]
    with environment(**({"AWS_REGION": "eu-west-3"} if env else {})):
        client = build("eu-west-1" if own else None, "http://own:1" if own else None, 4.0 if own else None,
                       context(aws))
    assert client.region == ("eu-west-1" if own else "eu-west-2" if section else "eu-west-3" if env else "us-east-1")
    # None: botocore reads AWS_ENDPOINT_URL_<SERVICE> / AWS_ENDPOINT_URL, as without a section.
    assert client.endpoint_url == ("http://own:1" if own else "http://section:2" if section else None)
    # The lease table takes the section's timeout only below failover_time / 2: a slow renewal loses leases.
    assert client.timeout == (4.0 if own else min(7.0, default_timeout) if section and part == "lease table"
                              else 7.0 if section else default_timeout)


@settings(max_examples=30, deadline=None)
@given(region=st.sampled_from([None, "eu-west-1"]), endpoint=st.sampled_from([None, "http://own:1"]),
       timeout=st.sampled_from([None, 1.5]),
       section=st.builds(AwsSettings, region=st.sampled_from([None, "eu-west-2"]),
                         endpoint_url=st.sampled_from([None, "http://section:2"]),
                         profile=st.sampled_from([None, "p"]), request_timeout=st.sampled_from([None, 9.0])))
def test_under_keeps_each_set_value_and_the_section_profile(region: str | None, endpoint: str | None,
                                                            timeout: float | None, section: AwsSettings) -> None:
    merged = section.under(region=region, endpoint_url=endpoint, request_timeout=timeout)
    assert merged.region == (region or section.region)
    assert merged.endpoint_url == (endpoint or section.endpoint_url)
    assert merged.request_timeout == (timeout or section.request_timeout)
    assert merged.profile == section.profile
    assert section.under(region=None, endpoint_url=None) == section


@pytest.mark.parametrize(("section", "expected"), [
    (AwsSettings(), "http://kinesis-only:4567"),
    (AwsSettings(endpoint_url="http://section:2"), "http://section:2"),
])
async def test_a_per_service_endpoint_variable_applies_where_nothing_is_configured(
    section: AwsSettings, expected: str
) -> None:
    with environment(AWS_ENDPOINT_URL_KINESIS="http://kinesis-only:4567", AWS_ENDPOINT_URL="http://all:1"):
        source = KinesisSourceConfig(stream="s").build(context(section))
        s3 = S3SinkConfig(bucket="b").build(context(section))
        try:
            assert (await source.aws.open()).meta.endpoint_url == expected
            assert (await s3.aws.open()).meta.endpoint_url == (
                "http://all:1" if section.endpoint_url is None else "http://section:2")
        finally:
            await source.aws.close()
            await s3.aws.close()


def test_an_arn_region_beats_the_section_and_the_section_endpoint_still_applies() -> None:
    aws = AwsSettings(region="eu-west-2", endpoint_url="http://section:2")
    with environment():
        destination = SnsDestinationConfig(topic_arn="arn:aws:sns:ap-northeast-1:123456789012:t").build(context(aws))
    assert (destination._client.region, destination._client.endpoint_url) == ("ap-northeast-1", "http://section:2")


def test_a_destination_into_the_source_stream_is_seen_through_the_section() -> None:
    source = KinesisSourceConfig(stream="orders")
    aws = AwsSettings(endpoint_url="http://section:2", region="eu-west-2")
    same = KinesisDestinationConfig(stream="orders", endpoint_url="http://section:2")
    other = KinesisDestinationConfig(stream="orders", endpoint_url="http://elsewhere:3")
    assert same.feeds(source, context(aws)) == "stream"
    assert other.feeds(source, context(aws)) is None


@pytest.fixture
def profile_files(tmp_path: Path) -> Iterator[dict[str, str]]:
    config, credentials = tmp_path / "config", tmp_path / "credentials"
    config.write_text("[profile shared]\nregion = ap-southeast-2\n")
    credentials.write_text("[shared]\naws_access_key_id = AKIDFROMPROFILE\naws_secret_access_key = s\n")
    yield {"AWS_CONFIG_FILE": str(config), "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
           "AWS_ACCESS_KEY_ID": "AKIDFROMENV", "AWS_SECRET_ACCESS_KEY": "s"}


class Sent(Exception):
    """Stops a request once signed: the test reads its headers instead of sending it."""


async def test_the_section_profile_signs_requests_and_gives_its_region(profile_files: dict[str, str]) -> None:
    seen: list[dict[str, Any]] = []

    def capture(request: Any, **_: Any) -> None:
        seen.append(dict(request.headers))
        raise Sent

    with environment(**profile_files):
        sink = S3SinkConfig(bucket="b", endpoint_url="http://127.0.0.1:9").build(
            context(AwsSettings(profile="shared")))
        client = await sink.aws.open()
        client.meta.events.register("before-send.s3", capture)
        try:
            with pytest.raises(SinkError):
                await sink.aws.call("list_objects_v2", SinkError, Bucket="b")
        finally:
            await sink.aws.close()
    authorization = str(seen[0]["Authorization"])
    assert "Credential=AKIDFROMPROFILE/" in authorization  # the profile's keys, not the environment's
    assert "/ap-southeast-2/s3/" in authorization and sink.aws.region == "ap-southeast-2"


async def test_a_missing_profile_is_a_config_error_naming_the_field(profile_files: dict[str, str]) -> None:
    with environment(**profile_files):
        with pytest.raises(ConfigError, match="'nowhere'") as caught:
            S3SinkConfig(bucket="b").build(context(AwsSettings(profile="nowhere")))
        assert caught.value.field == "aws.profile"
        named = S3SinkConfig(bucket="b", region="eu-west-1").build(context(AwsSettings(profile="nowhere")))
        with pytest.raises(ConfigError, match="aws configure --profile nowhere"):
            await named.aws.open()


def pipeline_file(folder: Path, body: str) -> Path:
    (folder / "aws_section_app.py").write_text("def handle(batch, context):\n    return []\n")
    path = folder / "pipeline.toml"
    path.write_text('name = "p"\nhandler = "aws_section_app:handle"\n' + textwrap.dedent(body))
    return path


def test_a_pipeline_file_carries_its_aws_section_to_every_part(tmp_path: Path) -> None:
    path = pipeline_file(tmp_path, """
        [aws]
        region = "eu-north-1"
        endpoint_url = "http://127.0.0.1:5000"
        profile = "shared"
        [source]
        type = "kinesis"
        stream = "s"
        [[sinks]]
        type = "s3"
        bucket = "b"
        endpoint_url = "http://127.0.0.1:6000"
    """)
    loaded = load_pipeline(path)
    assert loaded.context.aws == AwsSettings(region="eu-north-1", endpoint_url="http://127.0.0.1:5000",
                                             profile="shared")
    with environment():
        source = loaded.config.source.build(loaded.context)
        assert isinstance(source, KinesisSource)
        assert (source.aws.region, source.aws.endpoint_url) == ("eu-north-1", "http://127.0.0.1:5000")


def test_without_a_section_nothing_changes(tmp_path: Path) -> None:
    loaded = load_pipeline(pipeline_file(tmp_path, '[source]\ntype = "local"\nstream = "s"\n'))
    assert loaded.config.aws == AwsSettings() == loaded.context.aws


@pytest.mark.parametrize(("section", "expected"), [('regoin = "eu-west-1"', "regoin"),
                                                    ("request_timeout = 0", "aws.request_timeout")])
def test_a_wrong_aws_setting_is_refused_with_its_path(tmp_path: Path, section: str, expected: str) -> None:
    path = pipeline_file(tmp_path, f'[aws]\n{section}\n[source]\ntype = "local"\nstream = "s"\n')
    with pytest.raises(ConfigError, match=expected):
        load_pipeline(path)


def test_validate_accepts_an_aws_section_in_a_pipeline_without_aws_parts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = pipeline_file(tmp_path, '[aws]\nregion = "eu-west-1"\n[source]\ntype = "local"\nstream = "s"\n'
                                   '[[sinks]]\ntype = "stdout"\n')
    assert main(["validate", str(path)]) == 0
    assert "warn" not in capsys.readouterr().err.lower()


def test_schema_describes_the_aws_section(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = orjson.loads(capsys.readouterr().out)
    section = schema["$defs"]["AwsSettings"]
    assert sorted(section["properties"]) == ["endpoint_url", "profile", "region", "request_timeout"]
    assert all(field["description"] for field in section["properties"].values())
    assert "$ref" in str(schema["$defs"]["PipelineConfig"]["properties"]["aws"])
