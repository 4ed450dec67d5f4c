"""``streamfn replay`` forms exactly the live run's batches, so it overwrites their objects, and stops at
the live checkpoint: every record's output exists exactly once, counted record by record."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections import Counter
from pathlib import Path

import orjson

from tests.integration.aws_support import client, unique
from tests.integration.test_ops_cli import CALLS_LOG, ok, streamfn
from tests.pipelines import append, output_objects, write_pipeline

RECORDS_PER_PRODUCE = 250


def events(start: int, n: int) -> list[tuple[str, bytes]]:
    return [(f"key-{i % 7}", orjson.dumps({"v": i})) for i in range(start, start + n)]


def outputs(folder: Path) -> Counter[int]:
    """How many times each record's output appears across every object of the sink."""
    return Counter(item["v"] for items in output_objects(folder).values() for item in items)


def handled(calls: Path) -> Counter[int]:
    """How many times the handler was called with each record since ``calls`` was last removed."""
    if not calls.exists():
        return Counter()
    return Counter(int(line.split()[2]) for line in calls.read_text().splitlines())


def produce_run_produce_run(tmp_path: Path, **pipeline: str) -> Path:
    """Two produce/run rounds whose batches do not line up with one formed over both (250 = 2.5 batches)."""
    config = write_pipeline(tmp_path, CALLS_LOG, shards=2, batching="max_records = 50", **pipeline)
    append(config, events(0, RECORDS_PER_PRODUCE))
    ok(streamfn("run", str(config), "--until-caught-up", cwd=tmp_path))
    append(config, events(RECORDS_PER_PRODUCE, RECORDS_PER_PRODUCE))
    ok(streamfn("run", str(config), "--until-caught-up", cwd=tmp_path))
    return config


def test_replay_from_trim_horizon_overwrites_every_live_object_and_stops_at_the_checkpoint(tmp_path: Path) -> None:
    config = produce_run_produce_run(tmp_path)
    out, calls = tmp_path / "out", tmp_path / "calls.log"
    live = output_objects(out)
    assert outputs(out) == Counter(range(2 * RECORDS_PER_PRODUCE))
    append(config, events(500, 40))  # past the checkpoint: the next run's to handle, not the replay's
    calls.unlink()

    result = ok(streamfn("replay", str(config), "--from", "trim_horizon", "--quiet", cwd=tmp_path))
    assert handled(calls) == Counter(range(500)), "every record up to the checkpoint, once; none past it"
    assert sorted(output_objects(out)) == sorted(live), "the same objects, overwritten: none beside them"
    assert outputs(out) == Counter(range(500))
    del result

    calls.unlink()
    ok(streamfn("run", str(config), "--until-caught-up", cwd=tmp_path))
    assert handled(calls) == Counter(range(500, 540)), "the next run handles only what the replay left"
    assert outputs(out) == Counter(range(540)), "every record's output exactly once across all objects"


def test_replay_past_the_checkpoint_only_when_asked(tmp_path: Path) -> None:
    config = produce_run_produce_run(tmp_path)
    append(config, events(500, 40))
    calls = tmp_path / "calls.log"
    calls.unlink()
    ok(streamfn("replay", str(config), "--from", "trim_horizon", "--past-checkpoint", "--quiet", cwd=tmp_path))
    assert handled(calls) == Counter(range(540))
    assert outputs(tmp_path / "out") == Counter(range(540)), "live batches overwritten, the rest in new objects"


def test_replay_of_a_time_range_widens_to_whole_live_batches(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, CALLS_LOG, shards=1, batching="max_records = 50")
    append(config, events(0, 120), arrival_time=time.time() - 30)
    append(config, events(120, 30), arrival_time=time.time() - 20)  # the range: inside a live batch [100, 149]
    append(config, events(150, 100), arrival_time=time.time() - 10)
    ok(streamfn("run", str(config), "--until-caught-up", cwd=tmp_path))
    live = output_objects(tmp_path / "out")
    calls = tmp_path / "calls.log"
    calls.unlink()
    ok(streamfn("replay", str(config), "--from", str(time.time() - 25), "--to", str(time.time() - 15), "--quiet",
                cwd=tmp_path))
    assert handled(calls) == Counter(range(100, 150)), "the one live batch the range falls in, whole"
    assert sorted(output_objects(tmp_path / "out")) == sorted(live)
    assert outputs(tmp_path / "out") == Counter(range(250))


def test_replay_with_lanes_overwrites_each_lanes_batches(tmp_path: Path) -> None:
    config = produce_run_produce_run(tmp_path, extra="parallelization_factor = 3")
    out, calls = tmp_path / "out", tmp_path / "calls.log"
    live = output_objects(out)
    calls.unlink()
    ok(streamfn("replay", str(config), "--from", "trim_horizon", "--quiet", cwd=tmp_path))
    assert handled(calls) == Counter(range(500))
    assert sorted(output_objects(out)) == sorted(live)
    assert outputs(out) == Counter(range(500))


async def s3_outputs(endpoint: str, bucket: str) -> dict[str, list[int]]:
    """Every object of the bucket and the records whose output it holds."""
    found = {}
    async with client("s3", endpoint) as s3:
        listing = await s3.list_objects_v2(Bucket=bucket)
        for entry in listing.get("Contents", []):
            body = await (await s3.get_object(Bucket=bucket, Key=entry["Key"]))["Body"].read()
            found[entry["Key"]] = [orjson.loads(line)["v"] for line in gzip.decompress(body).splitlines()]
    return found


async def test_replay_into_s3_overwrites_the_live_objects(moto_endpoint: str, aws_env: dict[str, str],
                                                          tmp_path: Path) -> None:
    bucket = unique("replay")
    sinks = (f'[[sinks]]\ntype = "s3"\nbucket = "{bucket}"\nendpoint_url = "{moto_endpoint}"\ncreate_bucket = true\n'
             'gzip = true\nkey = "{year}/{pipeline}/{shard_id}/{first_seq}-{last_seq}.ndjson"\n')
    config = await asyncio.to_thread(produce_run_produce_run, tmp_path, sinks=sinks)
    live = await s3_outputs(moto_endpoint, bucket)
    assert Counter(v for values in live.values() for v in values) == Counter(range(500))
    (tmp_path / "calls.log").unlink()
    await asyncio.to_thread(lambda: ok(streamfn("replay", str(config), "--from", "trim_horizon", "--quiet",
                                                cwd=tmp_path)))
    assert handled(tmp_path / "calls.log") == Counter(range(500))
    assert await s3_outputs(moto_endpoint, bucket) == live, "every object overwritten, none added"
