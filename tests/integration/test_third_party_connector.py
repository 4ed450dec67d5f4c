"""A connector from another package: built, pip-installed into a folder of its own, found through the
``streamfn.connectors`` entry point group, and run by an unmodified ``streamfn run``.

The package declares a source (``numbers``: one shard of ``count`` records, then the shard ends)
and a sink (``lines``: items appended to a file). Nothing in streamfn names them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipelines import REPO

PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "streamfn-numbers"
version = "0.1.0"

[project.entry-points."streamfn.connectors"]
numbers = "streamfn_numbers:CONNECTOR"
"""

CONNECTOR = '''
"""A third-party streamfn connector: a counting source and a file sink."""

import time
from pathlib import Path
from typing import Any

from streamfn.components import BuildContext
from streamfn.protocols.sink import Sink, SinkBatch, SinkConfig
from streamfn.protocols.source import (ReadResult, ShardInfo, ShardReader, Source, SourceConfig, SourceTraits,
                                       StartingPosition)
from streamfn.records import Batch, Position, Record
from streamfn.registry import Connector


class NumbersConfig(SourceConfig, kw_only=True, tag="numbers"):
    count: int = 10

    def build(self, ctx: BuildContext) -> "NumbersSource":
        return NumbersSource(self.count)

    def stream_name(self) -> str:
        return "numbers"


class NumbersSource(Source):
    traits = SourceTraits(kind="numbers", dense_sequences=True)
    name = "numbers"

    def __init__(self, count: int) -> None:
        self.count = count

    async def open(self) -> None:
        pass

    async def list_shards(self) -> list[ShardInfo]:
        return [ShardInfo("numbers-0")]

    def reader(self, shard: ShardInfo, after: Position | None, start: StartingPosition) -> "NumbersReader":
        return NumbersReader(self.count, after.sequence if after is not None else 0)

    def lambda_event(self, batch: Batch) -> dict[str, Any]:
        return {"Records": [{"n": record.sequence} for record in batch]}

    async def close(self) -> None:
        pass


class NumbersReader(ShardReader):
    def __init__(self, count: int, after: int) -> None:
        self.count, self.after = count, after

    async def read(self, max_records: int, wait: float) -> ReadResult:
        last = min(self.count, self.after + max_records)
        numbers = range(self.after + 1, last + 1)
        records = [Record("numbers-0", n, str(n), str(n).encode(), time.time()) for n in numbers]
        self.after = last
        return ReadResult(records, shard_end=last >= self.count)

    async def close(self) -> None:
        pass


class LinesConfig(SinkConfig, kw_only=True, tag="lines"):
    path: str

    def build(self, ctx: BuildContext) -> "LinesSink":
        return LinesSink(ctx.resolve(self.path))


class LinesSink(Sink):
    keyed_by_batch = False

    def __init__(self, path: Path) -> None:
        self.path = path

    async def open(self) -> None:
        pass

    async def write(self, batch: SinkBatch) -> None:
        with self.path.open("a") as out:
            for item in batch.items:
                out.write(f"{item}\\n")

    async def close(self) -> None:
        pass


CONNECTOR = Connector(name="numbers", sources=(NumbersConfig,), sinks=(LinesConfig,))
'''

PIPELINE = """
name = "third-party"
handler = "handler:handle"

[source]
type = "numbers"
count = 25

[[sinks]]
type = "lines"
path = "out.txt"
"""

HANDLER = """
def handle(batch, context):
    return [record.sequence * 10 for record in batch]
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The connector package, built and installed with pip into a folder of its own."""
    root = tmp_path_factory.mktemp("connector")
    package = root / "src"
    (package / "streamfn_numbers").mkdir(parents=True)
    (package / "pyproject.toml").write_text(PYPROJECT)
    (package / "streamfn_numbers" / "__init__.py").write_text(CONNECTOR)
    target = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(package)], check=True, timeout=120)
    assert list(target.glob("streamfn_numbers-0.1.0.dist-info"))
    return target


def streamfn(args: list[str], cwd: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    return subprocess.run([sys.executable, "-m", "streamfn", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_a_pipeline_runs_through_an_installed_connector(installed: Path, tmp_path: Path) -> None:
    (tmp_path / "pipeline.toml").write_text(PIPELINE)
    (tmp_path / "handler.py").write_text(HANDLER)
    run = streamfn(["run", "pipeline.toml", "--until-caught-up"], tmp_path, installed)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out.txt").read_text().split() == [str(n * 10) for n in range(1, 26)]


def test_the_schema_lists_the_installed_connector(installed: Path, tmp_path: Path) -> None:
    shown = streamfn(["schema"], tmp_path, installed)
    assert shown.returncode == 0, shown.stderr
    definitions = json.loads(shown.stdout)["$defs"]
    assert {"NumbersConfig", "LinesConfig", "KafkaSourceConfig", "LocalSinkConfig"} <= set(definitions)


def test_an_unknown_type_names_the_registered_ones(installed: Path, tmp_path: Path) -> None:
    (tmp_path / "pipeline.toml").write_text(PIPELINE.replace('type = "numbers"', 'type = "letters"'))
    (tmp_path / "handler.py").write_text(HANDLER)
    checked = streamfn(["validate", "pipeline.toml"], tmp_path, installed)
    assert checked.returncode != 0
    assert "letters" in checked.stderr and "source" in checked.stderr
