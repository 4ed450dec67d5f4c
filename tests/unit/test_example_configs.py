"""Every example under configs/ validates and its handler imports, as README promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamfn.config import load_pipeline
from streamfn.engine.invoke import load_handler

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml"))


def test_there_are_examples() -> None:
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_is_valid(path: Path) -> None:
    loaded = load_pipeline(path, env={})
    assert callable(load_handler(loaded.config.handler, [loaded.context.config_dir]))
