"""Helpers for the AWS connector tests: clients on the test servers, streams, puts, drains."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tomllib
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from streamfn.checkpoints.dynamodb import DynamoDBCheckpointStoreConfig
from streamfn.checkpoints.local import LocalCheckpointStoreConfig
from streamfn.config import LoadedPipeline, PipelineConfig
from streamfn.interpolate import interpolate
from streamfn.records import Record
from streamfn.sinks.dynamodb import DynamoDBSinkConfig
from streamfn.sinks.local import LocalSinkConfig
from streamfn.sinks.s3 import S3SinkConfig
from streamfn.sources.base import ShardReader
from streamfn.sources.dynamodb_streams import DynamoDBStreamsSourceConfig
from streamfn.sources.kinesis import KinesisSourceConfig

MAX_HASH = 2**128 - 1


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@contextlib.asynccontextmanager
async def client(service: str, endpoint: str, **config: Any) -> AsyncIterator[Any]:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    cfg = AioConfig(s3={"addressing_style": "path"}, **config) if service == "s3" else AioConfig(**config)
    async with get_session().create_client(service, endpoint_url=endpoint, region_name="us-east-1",
                                           aws_access_key_id="testing", aws_secret_access_key="testing",
                                           config=cfg) as c:
        yield c


async def create_stream(kinesis: Any, name: str, shards: int) -> None:
    await kinesis.create_stream(StreamName=name, ShardCount=shards)
    await wait_active(kinesis, name)


async def wait_active(kinesis: Any, name: str) -> None:
    for _ in range(200):
        summary = await kinesis.describe_stream_summary(StreamName=name)
        if summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"stream {name} never became ACTIVE")


async def shard_hash_starts(kinesis: Any, name: str) -> dict[str, int]:
    """Open shards and the first hash key each owns (put with it as the explicit hash key)."""
    shards = (await kinesis.list_shards(StreamName=name))["Shards"]
    return {
        s["ShardId"]: int(s["HashKeyRange"]["StartingHashKey"])
        for s in shards
        if "EndingSequenceNumber" not in s.get("SequenceNumberRange", {})
    }


async def put(kinesis: Any, name: str, records: Sequence[tuple[str, bytes, int | None]]) -> list[tuple[str, int]]:
    """PutRecords in chunks of 500 (in order, one chunk at a time); (shard, sequence) per record."""
    out: list[tuple[str, int]] = []
    for start in range(0, len(records), 500):
        entries = []
        for key, data, hash_key in records[start:start + 500]:
            entry: dict[str, Any] = {"PartitionKey": key, "Data": data}
            if hash_key is not None:
                entry["ExplicitHashKey"] = str(hash_key)
            entries.append(entry)
        answer = await kinesis.put_records(StreamName=name, Records=entries)
        assert answer.get("FailedRecordCount", 0) == 0, answer
        out.extend((r["ShardId"], int(r["SequenceNumber"])) for r in answer["Records"])
    return out


async def drain(reader: ShardReader, *, max_records: int = 100, wait: float = 0.3,
                until_end: bool = False, expect: int | None = None, timeout: float = 30.0) -> tuple[list[Record], bool]:
    """Read until an empty answer (or the shard's end, or ``expect`` records); (records, ended)."""
    records: list[Record] = []
    async with asyncio.timeout(timeout):
        while True:
            result = await reader.read(max_records, wait)
            assert len(result.records) <= max_records
            records.extend(result.records)
            if result.shard_end:
                return records, True
            if expect is not None:
                if len(records) >= expect:
                    return records, False
                continue
            if not result.records and not until_end:
                return records, False


# ---- pipelines with the AWS connectors -------------------------------------------------------------------------
# streamfn.config's unions may not list every AWS connector yet; this loader accepts them all, so the
# end-to-end tests run the same engine entry point (run_pipelines) as `streamfn run`.

class AwsPipelineConfig(PipelineConfig, kw_only=True, forbid_unknown_fields=True):
    """PipelineConfig with every AWS source, sink and checkpoint store accepted."""

    source: KinesisSourceConfig | DynamoDBStreamsSourceConfig  # type: ignore[assignment]
    sinks: list[S3SinkConfig | DynamoDBSinkConfig | LocalSinkConfig] = msgspec.field(  # type: ignore[assignment]
        default_factory=list)
    checkpoints: DynamoDBCheckpointStoreConfig | LocalCheckpointStoreConfig | None = None


def load_aws_pipeline(path: Path) -> LoadedPipeline:
    """Like ``streamfn.config.load_pipeline``, with every AWS source and sink accepted."""
    document = interpolate(tomllib.loads(path.read_text()), os.environ)
    return LoadedPipeline(config=msgspec.convert(document, AwsPipelineConfig, strict=False), path=path)


RUNNER = """
import asyncio, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from streamfn.engine.daemon import install_event_loop_policy, run_pipelines
from tests.integration.aws_support import load_aws_pipeline
install_event_loop_policy()
loaded = [load_aws_pipeline(Path(p)) for p in sys.argv[1:] if not p.startswith("--")]
asyncio.run(run_pipelines(loaded, until_caught_up="--until-caught-up" in sys.argv))
"""


def start_pipeline(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A daemon process running ``config`` (stdout/stderr to ``<config>.log``); kill it with ``kill``."""
    repo = str(Path(__file__).resolve().parents[2])
    runner = config.parent / "run_pipeline.py"
    runner.write_text(RUNNER.format(repo=repo))
    log = open(config.with_suffix(".log"), "ab")  # noqa: SIM115 - kept by the child
    try:
        return subprocess.Popen(
            [sys.executable, str(runner), str(config), *args], cwd=config.parent,
            env={**os.environ, **FAKE_CREDENTIALS, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()


def run_caught_up(config: Path, *, timeout: float = 90.0, env: dict[str, str] | None = None) -> None:
    proc = start_pipeline(config, "--until-caught-up", env=env)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        raise
    assert code == 0, config.with_suffix(".log").read_text(errors="replace")[-3000:]


def kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    proc.wait(30)


FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1"}
