"""Helpers for the AWS connector tests: clients on the test servers, streams, puts, drains."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from streamfn.components import BuildContext
from streamfn.config import LoadedPipeline, load_pipeline
from streamfn.protocols.source import ShardReader
from streamfn.records import Record

MAX_HASH = 2**128 - 1
#: What a part is built for outside a pipeline file (no [aws] section).
CTX = BuildContext(pipeline="p", config_dir=Path("."), state_dir=Path("."))


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

def load_aws_pipeline(path: Path) -> LoadedPipeline:
    """The pipeline file as ``streamfn run`` reads it."""
    return load_pipeline(path)


def start_pipeline(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A daemon process running ``config`` (stdout/stderr to ``<config>.log``); kill it with ``kill``."""
    log = open(config.with_suffix(".log"), "ab")  # noqa: SIM115 - kept by the child
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "streamfn", "run", str(config), *args], cwd=config.parent,
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
