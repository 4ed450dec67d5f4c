"""``--until-caught-up`` on a Kinesis stream split during the run (kinesis-mock): the run ends only
after the children of the ended parent ran, even when their discovery is slow."""

from __future__ import annotations

import asyncio
import os
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from streamfn.config import load_pipeline
from streamfn.connectors.kinesis.source import KinesisSource
from streamfn.engine.daemon import run_pipelines
from streamfn.protocols.source import ShardInfo
from tests.integration.aws_support import client, create_stream, put, shard_hash_starts, unique, wait_active

#: The first batch waits for the test to split the stream and fill the children: the split
#: happens while the parent is being read, and no child record arrives after the run could end.
HANDLER = """
import os
import time

def handle(batch, context):
    while not os.path.exists(os.environ["SPLIT_DONE"]):
        time.sleep(0.01)
    with open(os.environ["HANDLED_LOG"], "a") as log:
        log.write("".join(f"{r.shard_id} {r.data.decode()}\\n" for r in batch))
    return [{"id": r.data.decode()} for r in batch]
"""

PER_SHARD = 30


def write_config(folder: Path, stream: str, endpoint: str, lanes: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "split_handler.py").write_text(textwrap.dedent(HANDLER))
    config = folder / "pipeline.toml"
    config.write_text(
        f'name = "split"\nhandler = "split_handler:handle"\nstate_dir = "state"\nparallelization_factor = {lanes}\n'
        f'[source]\ntype = "kinesis"\nstream = "{stream}"\nendpoint_url = "{endpoint}"\n'
        "idle_interval = 0.02\nmax_reads_per_second = 50.0\nbackoff_initial = 0.01\nbackoff_max = 0.05\n"
        "[batching]\nmax_records = 10\n[retry]\ninitial_delay = 0.01\nmax_delay = 0.05\n"
        '[[sinks]]\ntype = "local"\npath = "out"\nfsync = false\n'
    )
    return config


async def split_while_running(folder: Path, endpoint: str, lanes: int) -> Counter[str]:
    """One run: a 1-shard stream with records, the pipeline started, the shard split and both
    children given records while the parent's first batch waits; records handled per id."""
    stream = unique("split")
    config = write_config(folder, stream, endpoint, lanes)
    os.environ["HANDLED_LOG"] = str(folder / "handled.log")
    os.environ["SPLIT_DONE"] = str(folder / "split.done")
    async with client("kinesis", endpoint) as kinesis:
        await create_stream(kinesis, stream, 1)
        await put(kinesis, stream, [(f"k{i}", b"parent-%d" % i, None) for i in range(PER_SHARD)])
        run = asyncio.create_task(run_pipelines([load_pipeline(config)], until_caught_up=True, handle_signals=False))
        (parent,) = (await shard_hash_starts(kinesis, stream))
        await kinesis.split_shard(StreamName=stream, ShardToSplit=parent, NewStartingHashKey=str(2**127))
        await wait_active(kinesis, stream)
        children = list((await shard_hash_starts(kinesis, stream)).values())
        assert len(children) == 2
        await put(kinesis, stream, [(f"k{i}", b"child-%d" % i, children[i % 2]) for i in range(2 * PER_SHARD)])
        (folder / "split.done").touch()
        async with asyncio.timeout(60):
            await run
    lines = (folder / "handled.log").read_text().splitlines()
    return Counter(line.split(" ")[1] for line in lines)


EXPECTED = sorted([f"parent-{i}" for i in range(PER_SHARD)] + [f"child-{i}" for i in range(2 * PER_SHARD)])


@pytest.mark.parametrize("lanes", [1, 4])
async def test_until_caught_up_waits_for_children_found_by_a_slow_listing(
    tmp_path: Path, kinesis_endpoint: str, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, lanes: int
) -> None:
    """The window between the parent's end and the children's discovery is forced wide open:
    every listing answers 0.3 s late (as a slow ListShards round trip would)."""
    listed = KinesisSource.list_shards

    async def slow_listing(self: KinesisSource) -> list[ShardInfo]:
        shards = await listed(self)
        await asyncio.sleep(0.3)
        return shards

    monkeypatch.setattr(KinesisSource, "list_shards", slow_listing)
    monkeypatch.setenv("HANDLED_LOG", "")
    monkeypatch.setenv("SPLIT_DONE", "")
    handled = await split_while_running(tmp_path / "run", kinesis_endpoint, lanes)
    assert sorted(handled) == EXPECTED, "the run ended before every record of the children was handled"
    assert set(handled.values()) == {1}


async def test_until_caught_up_handles_parent_and_children_every_time(
    tmp_path: Path, kinesis_endpoint: str, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Repeated at the servers' own pace: the race was seen in 6 of 113 runs."""
    monkeypatch.setenv("HANDLED_LOG", "")
    monkeypatch.setenv("SPLIT_DONE", "")
    for attempt in range(10):
        handled = await split_while_running(tmp_path / f"run{attempt}", kinesis_endpoint, 1 + attempt % 2)
        assert sorted(handled) == EXPECTED, f"attempt {attempt}: the run ended before the children were handled"
        assert set(handled.values()) == {1}
