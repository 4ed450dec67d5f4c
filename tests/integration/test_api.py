"""The embedding API, used only through ``import streamfn``: pipelines from a dict or a config object,
handlers passed as callables, the engine run inside the test's own event loop."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import streamfn
from streamfn.errors import ConfigError


def spec(name: str = "clicks", **more: Any) -> dict[str, Any]:
    return {"name": name, "source": {"type": "local", "stream": "clicks", "shards": 2},
            "batching": {"max_records": 10},
            "sinks": [{"type": "local", "path": "out", "fsync": False}], **more}


def clicks(start: int, count: int) -> list[tuple[str, bytes]]:
    return [(f"user-{i % 7}", json.dumps({"n": i}).encode()) for i in range(start, start + count)]


def written(base: Path) -> list[int]:
    """Every ``n`` in the local sink's objects, sorted (duplicates kept)."""
    return sorted(json.loads(line)["n"] for path in (base / "out").rglob("*.ndjson") if not path.name.startswith(".")
                  for line in path.read_text().splitlines())


def test_the_exported_names_are_the_handler_and_embedding_api() -> None:
    assert sorted(streamfn.__all__) == ["Batch", "Context", "Engine", "Position", "Record", "Result",
                                        "append_records", "pipeline"]
    for name in streamfn.__all__:
        assert getattr(streamfn, name) is not None


async def test_a_callable_handler_runs_inside_this_loop_until_caught_up(tmp_path: Path) -> None:
    seen: list[int] = []

    def handle(batch: streamfn.Batch, context: streamfn.Context) -> list[dict[str, Any]]:
        seen.extend(record.json()["n"] for record in batch)
        return [{"n": record.json()["n"], "shard": context.shard_id} for record in batch]

    clicks_pipeline = streamfn.pipeline(spec(), handler=handle, base_dir=tmp_path)
    ticks = 0

    async def beside() -> None:  # the program's own work goes on while the engine runs
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    other = asyncio.create_task(beside())
    async with streamfn.Engine(clicks_pipeline) as engine:
        assert engine.running
        assert streamfn.append_records(clicks_pipeline, clicks(0, 100)) == 100
        async with asyncio.timeout(30):
            await engine.caught_up()
        assert written(tmp_path) == list(range(100))
    assert not engine.running
    other.cancel()
    assert sorted(seen) == list(range(100)) and ticks > 0


async def test_start_stop_and_resume_from_the_checkpoints(tmp_path: Path) -> None:
    async def handle(batch: streamfn.Batch, context: streamfn.Context) -> list[dict[str, Any]]:
        return [record.json() for record in batch]

    first = streamfn.pipeline(spec(), handler=handle, base_dir=tmp_path)
    streamfn.append_records(first, clicks(0, 40))
    engine = streamfn.Engine(first)
    await engine.start()
    async with asyncio.timeout(30):
        await engine.caught_up()
    await engine.stop()

    streamfn.append_records(first, clicks(40, 25))
    again = streamfn.Engine(streamfn.pipeline(spec(), handler=handle, base_dir=tmp_path))
    async with again:
        async with asyncio.timeout(30):
            await again.caught_up()
    assert written(tmp_path) == list(range(65)), "each record once: the second engine resumed after the first"


async def test_a_config_object_and_a_handler_string_work_too(tmp_path: Path) -> None:
    (tmp_path / "by_name.py").write_text("def handle(batch, context):\n    return [r.json() for r in batch]\n")
    from_dict = streamfn.pipeline(spec(handler="by_name:handle"), base_dir=tmp_path)
    config_object = streamfn.pipeline(from_dict.config, base_dir=tmp_path)  # a PipelineConfig as it is
    streamfn.append_records(config_object, clicks(0, 15))
    async with streamfn.Engine(config_object) as engine:
        async with asyncio.timeout(30):
            await engine.caught_up()
    assert written(tmp_path) == list(range(15))


async def test_metrics_are_served_when_the_spec_enables_them(tmp_path: Path) -> None:
    served = streamfn.pipeline(spec(metrics={"enabled": True, "port": 0}), handler=lambda batch, context: None,
                               base_dir=tmp_path)
    streamfn.append_records(served, clicks(0, 12))
    async with streamfn.Engine(served) as engine:
        async with asyncio.timeout(30):
            await engine.caught_up()
        assert engine.metrics_url is not None
        page = await asyncio.to_thread(fetch, engine.metrics_url + "/metrics")
    handled = [line for line in page.splitlines() if line.startswith("streamfn_records_handled_total{")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in handled) == 12


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def test_invalid_specs_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_records"):
        streamfn.pipeline(spec(batching={"max_records": 0}), handler=print, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="handler"):
        streamfn.pipeline(spec(), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="not callable"):
        streamfn.pipeline(spec(), handler="nope", base_dir=tmp_path)  # type: ignore[arg-type]
    one = streamfn.pipeline(spec(), handler=print, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="names must differ"):
        streamfn.Engine(one, one)


async def test_a_handler_that_fails_to_import_is_raised_from_start(tmp_path: Path) -> None:
    engine = streamfn.Engine(streamfn.pipeline(spec(handler="missing_module:handle"), base_dir=tmp_path))
    with pytest.raises(streamfn.errors.StreamfnError, match="missing_module"):
        await engine.start()
    assert not engine.running
