"""Which SQLite and OS failures of a state file are transient: by result code, never by message."""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from streamfn.errors import RetryableError
from streamfn.storage_errors import is_transient, storage_faults


def error_of(run: Callable[[], object]) -> Exception:
    try:
        run()
    except Exception as exc:
        return exc
    raise AssertionError("no error")


def test_sqlite_errors_are_told_apart_by_their_code(tmp_path: Path) -> None:
    path = tmp_path / "x.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (a)")
    read_only = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    readonly_error = error_of(lambda: read_only.execute("INSERT INTO t VALUES (1)"))
    read_only.close()
    assert is_transient(readonly_error)  # SQLITE_READONLY: the disk or the file's mode, fixable outside

    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not a database" * 100)
    assert not is_transient(error_of(lambda: sqlite3.connect(garbage).execute("SELECT 1 FROM t")))  # NOTADB
    assert not is_transient(error_of(lambda: sqlite3.connect(path).execute("SELECT nope FROM t")))
    closed = sqlite3.connect(path)
    closed.close()
    assert not is_transient(error_of(lambda: closed.execute("SELECT 1")))  # no SQLite code at all


def test_os_errors_of_a_full_or_read_only_disk_are_transient() -> None:
    assert is_transient(OSError(errno.ENOSPC, "No space left on device"))
    assert is_transient(OSError(errno.EROFS, "Read-only file system"))
    assert not is_transient(OSError(errno.ENOENT, "No such file"))
    assert not is_transient(ValueError("x"))


def test_storage_faults_wraps_only_transient_errors(tmp_path: Path) -> None:
    with pytest.raises(RetryableError) as raised, storage_faults(tmp_path / "f", "writing"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert raised.value.kind == "storage" and "writing failed on" in str(raised.value)
    with pytest.raises(sqlite3.OperationalError), storage_faults(tmp_path / "f", "reading"):
        sqlite3.connect(":memory:").execute("SELECT nope")
