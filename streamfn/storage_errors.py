"""What a failing SQLite state file (the local log, local checkpoints) means for the caller.

A full, read-only or failing disk, or a file another process holds locked, is transient: the
operator frees space or the lock ends, and the same write then succeeds. Those become
``RetryableError(kind="storage")``; anything else (a corrupt file, a bug) stays what it was.
Errors are told apart by SQLite's result code, never by their message text.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import RetryableError

#: Primary SQLite result codes that a retry can outlive (extended codes are folded to these).
TRANSIENT_SQLITE_CODES = frozenset({
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_PROTOCOL,
})

#: A full, read-only or unavailable disk (errno): an operator (or time) fixes it, so the write is
#: retried and the shard counts as blocked meanwhile; a batch is never disposed of for it.
STORAGE_ERRNOS = frozenset({
    errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM, errno.EMFILE,
    errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EBUSY, errno.ESTALE,
})


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a storage failure that retrying the same operation may get past."""
    if isinstance(exc, sqlite3.Error):
        # Errors raised by the sqlite3 module itself (a closed connection) carry no SQLite code.
        code: int | None = getattr(exc, "sqlite_errorcode", None)
        return code is not None and (code & 0xFF) in TRANSIENT_SQLITE_CODES
    return isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS


def storage_error(exc: BaseException, path: Path, action: str) -> RetryableError:
    """The RetryableError to raise for a transient failure of ``action`` on the file at ``path``."""
    name = exc.sqlite_errorname if isinstance(exc, sqlite3.Error) and is_transient(exc) else type(exc).__name__
    return RetryableError(
        f"{action} failed on {path} ({name}: {exc}); retrying. If the disk is full or read-only, free space"
        " or fix its permissions: streamfn resumes on its own",
        kind="storage",
    )


@contextmanager
def storage_faults(path: Path, action: str) -> Iterator[None]:
    """Turn a transient storage failure inside the block into ``RetryableError(kind="storage")``."""
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        if is_transient(exc):
            raise storage_error(exc, path, action) from exc
        raise
