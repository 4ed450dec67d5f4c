"""plan_reload: every running or wanted pipeline lands in exactly one of stop/start/restart/keep."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from streamfn.engine.reload import expand_directories, plan_reload

keys = st.sampled_from([Path(f"/c/{name}.toml") for name in "abcdef"])
settings = st.dictionaries(keys, st.integers(0, 2), max_size=6)


@given(settings, settings, st.sets(keys))
def test_each_pipeline_gets_one_fate(running: dict[Path, int], wanted: dict[Path, int], refused: set[Path]) -> None:
    refused -= set(wanted)  # a file is either loaded or refused
    plan = plan_reload(running, wanted, refused)
    assert set(plan.start) == set(wanted) - set(running)
    assert set(plan.restart) == {k for k in wanted if k in running and wanted[k] != running[k]}
    assert set(plan.stop) == set(running) - set(wanted) - refused, "a refused file never stops its pipeline"
    assert set(plan.keep) | set(plan.stop) | set(plan.restart) == set(running)
    assert not set(plan.keep) & (set(plan.stop) | set(plan.restart))
    assert plan.changes == bool(plan.start or plan.stop or plan.restart)


def test_equal_settings_keep_the_pipeline_running() -> None:
    key = Path("/c/a.toml")
    assert plan_reload({key: {"max_records": 10}}, {key: {"max_records": 10}}).keep == (key,)


def test_a_directory_means_its_pipeline_files(tmp_path: Path) -> None:
    for name in ("b.toml", "a.yaml", ".hidden.toml", "notes.txt", "c.json~"):
        (tmp_path / name).write_text("")
    assert expand_directories([tmp_path, "x.toml"]) == [tmp_path / "a.yaml", tmp_path / "b.toml", Path("x.toml")]

