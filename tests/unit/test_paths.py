"""Paths that can never leave their root, pipeline names, and disk errors classified by errno."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfn.errors import RetryableError, SinkError
from streamfn.paths import (
    NAME_ERRNOS,
    STORAGE_ERRNOS,
    classify_disk_error,
    key_problem,
    name_problem,
    path_under,
)

ROOT = Path("/srv/out/bucket")

#: Segments an attacker would try, mixed with ordinary ones.
segments = st.one_of(
    st.sampled_from(["..", ".", "", "a", "shard-0000", "...", "..a", "a..", "\0", "~"]),
    st.text(alphabet="./\\a-_\0", max_size=6),
)
keys = st.lists(segments, min_size=0, max_size=6).map("/".join)


@given(keys)
def test_a_key_either_stays_strictly_inside_its_root_or_is_refused(key: str) -> None:
    try:
        target = path_under(ROOT, key)
    except SinkError as exc:
        assert "refusing to write outside" in str(exc)
        assert key_problem(key) is not None or os.path.normpath(ROOT / key) == str(ROOT)
        return
    assert key_problem(key) is None
    assert target != ROOT
    assert os.path.commonpath([ROOT, target]) == str(ROOT)
    assert ".." not in target.parts


@pytest.mark.parametrize("key", [
    "../x", "a/../../x", "/etc/passwd", "..", "a/..", "a/b/", "", "a\0b",
    "p/../../../../tmp/escape/shard-0000/00000000000000000001-00000000000000000002.ndjson",
])
def test_attacks_are_refused(key: str) -> None:
    assert key_problem(key) is not None
    with pytest.raises(SinkError):
        path_under(ROOT, key)


@pytest.mark.parametrize("key", ["a/b.ndjson", "...", "a..b/c", "./a", "a//b", "p/shard-0/1-2.ndjson.gz"])
def test_ordinary_keys_are_accepted(key: str) -> None:
    assert key_problem(key) is None
    assert path_under(ROOT, key).is_relative_to(ROOT)


@given(st.text(max_size=140))
def test_an_accepted_pipeline_name_is_one_plain_path_segment(name: str) -> None:
    if name_problem(name) is None:
        assert name not in (".", "..") and not name.startswith(".")
        assert "/" not in name and "\0" not in name and "\\" not in name
        assert 1 <= len(name) <= 128
        assert key_problem(f"{name}/x") is None


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b", "../x", "", "a b", "x" * 129, "é"])
def test_unsafe_pipeline_names_are_refused(name: str) -> None:
    problem = name_problem(name)
    assert problem is not None and "letters, digits" in problem


@pytest.mark.parametrize("name", ["clicks", "p1", "a.b", "a..b", "_x", "-x", "x" * 128])
def test_safe_pipeline_names_are_accepted(name: str) -> None:
    assert name_problem(name) is None


@given(st.sampled_from(sorted(STORAGE_ERRNOS)))
def test_a_full_read_only_or_failing_disk_is_retryable(code: int) -> None:
    classified = classify_disk_error(OSError(code, os.strerror(code)), ROOT / "k")
    assert isinstance(classified, RetryableError) and classified.kind == "storage"


@given(st.sampled_from(sorted(NAME_ERRNOS)))
def test_a_name_the_disk_refuses_fails_the_batch(code: int) -> None:
    assert isinstance(classify_disk_error(OSError(code, os.strerror(code)), ROOT / "k"), SinkError)


def test_classification_is_by_errno_not_message() -> None:
    assert isinstance(classify_disk_error(OSError(errno.ENOSPC, "whatever the locale says"), "f"), RetryableError)
    assert classify_disk_error(OSError(errno.EPIPE, "No space left on device"), "f") is None
    assert classify_disk_error(OSError("no errno at all"), "f") is None
