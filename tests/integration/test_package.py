"""The release as a user gets it: build the sdist and wheel, install the wheel into a fresh venv,
run the quickstart from it, and type-check a handler against it with ``mypy --strict``.

Nothing here imports the work tree: every command runs outside it, without PYTHONPATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

import streamfn
from tests.pipelines import REPO, output_objects

VERSION = streamfn.__version__

TYPED_HANDLER = """
from typing import Any

from streamfn import Batch, Context, Result


def handle(batch: Batch, context: Context) -> list[dict[str, Any]] | Result:
    first = batch.first
    return [{"shard": context.shard_id, "first": first.sequence, "n": len(batch), "pages": batch.json()}]
"""

MISTYPED_HANDLER = """
from streamfn import Batch, Context


def handle(batch: Batch, context: Context) -> int:
    return batch.first.partition_key  # a str: mypy must know it from the installed package
"""


def clean_env() -> dict[str, str]:
    """The environment without anything that would make Python or mypy see the work tree."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH", "VIRTUAL_ENV")}


def run(args: Sequence[str | Path], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=clean_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build`` of the work tree: an sdist, and a wheel built from that sdist.

    Without build isolation (the dev venv has setuptools >= 77, the declared floor) so this takes
    seconds; ``make dist`` in CI builds the release the isolated way.
    """
    out = tmp_path_factory.mktemp("dist")
    ok(run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, REPO], cwd=out, timeout=180))
    return out


@pytest.fixture(scope="module")
def venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the wheel and its dependencies (from the configured package index).

    The venv gets no pip of its own (ensurepip is the slow part); the dev venv's pip installs into it.
    """
    root = tmp_path_factory.mktemp("venv")
    ok(run([sys.executable, "-m", "venv", "--without-pip", root], cwd=root))
    wheel = dist / f"streamfn-{VERSION}-py3-none-any.whl"
    ok(run([sys.executable, "-m", "pip", "--python", root / "bin" / "python", "install", "--quiet",
            "--disable-pip-version-check", wheel], cwd=root, timeout=300))
    return root


def test_sdist_and_wheel_carry_the_license_and_py_typed(dist: Path) -> None:
    with zipfile.ZipFile(dist / f"streamfn-{VERSION}-py3-none-any.whl") as wheel:
        names = set(wheel.namelist())
        metadata = wheel.read(f"streamfn-{VERSION}.dist-info/METADATA").decode()
    assert "streamfn/py.typed" in names
    assert f"streamfn-{VERSION}.dist-info/licenses/LICENSE" in names
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    assert "streamfn/engine/notify.py" in names
    with tarfile.open(dist / f"streamfn-{VERSION}.tar.gz") as sdist:
        members = set(sdist.getnames())
    for name in ("LICENSE", "pyproject.toml", "README.md", "streamfn/py.typed", "streamfn/cli.py"):
        assert f"streamfn-{VERSION}/{name}" in members


def test_quickstart_runs_from_the_installed_wheel(venv: Path, tmp_path: Path) -> None:
    python, cli = venv / "bin" / "python", venv / "bin" / "streamfn"
    where = ok(run([python, "-c", "import streamfn; print(streamfn.__file__)"], cwd=tmp_path)).strip()
    assert Path(where).is_relative_to(venv), f"streamfn imported from {where}, not the installed wheel"
    assert ok(run([cli, "--version"], cwd=tmp_path)).strip() == f"streamfn {VERSION}"

    configs = tmp_path / "configs"
    configs.mkdir()
    for name in ("quickstart.toml", "quickstart_handler.py"):
        shutil.copy(REPO / "configs" / name, configs / name)
    ok(run([cli, "validate", configs / "quickstart.toml"], cwd=tmp_path))
    ok(run([cli, "produce", configs / "quickstart.toml", "--count", "3000", "--quiet"], cwd=tmp_path))
    ok(run([cli, "run", configs / "quickstart.toml", "--until-caught-up"], cwd=tmp_path))

    rows = [row for rows in output_objects(tmp_path / "out" / "quickstart").values() for row in rows]
    assert sum(row["views"] for row in rows) == 3000, "every click counted exactly once"
    assert len({row["shard"] for row in rows}) == 4, "all four shards were read"


def test_a_handler_typed_against_the_wheel_passes_mypy_strict(venv: Path, tmp_path: Path) -> None:
    mypy = [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--python-executable",
            venv / "bin" / "python"]
    (tmp_path / "good_handler.py").write_text(TYPED_HANDLER)
    ok(run([*mypy, "good_handler.py"], cwd=tmp_path))

    (tmp_path / "bad_handler.py").write_text(MISTYPED_HANDLER)
    result = run([*mypy, "bad_handler.py"], cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'Incompatible return value type (got "str", expected "int")' in result.stdout
    assert "py.typed" not in result.stdout, "streamfn is seen as a typed package"
