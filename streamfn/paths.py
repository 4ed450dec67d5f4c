"""Files under a root folder: names that can never leave it, atomic writes, disk errors classified.

Local sinks and destinations write ``<root>/<key>``, where keys are built from templates, pipeline
names, stream names and shard ids. Config loading refuses what could leave the root; the checks
here run again on every write, so a crafted shard id or a record-derived value cannot either.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ConfigError, RetryableError, SinkError
from .storage_errors import STORAGE_ERRNOS

#: Pipeline names: they appear in object keys, state rows and ARNs, so path syntax is kept out.
NAME_RULE = "1-128 letters, digits, '.', '_' or '-', not starting with '.'"
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")

#: The object's name itself cannot be written here: every retry would fail the same way.
NAME_ERRNOS = frozenset({
    errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.EINVAL, errno.EILSEQ, errno.ELOOP,
})


def output_folder(root: Path) -> Path:
    """``root``, checked as the folder a sink or destination writes under: a path that is a file,
    or lies under one, is refused as a config error (field ``path``) instead of failing every write."""
    for part in (root, *root.parents):
        if part.exists():
            if not part.is_dir():
                where = "is a file" if part == root else f"is under {part}, which is a file"
                raise ConfigError(f"{root} {where}, not a folder: output is written under a folder; choose another"
                                  " path or move the file", field="path")
            break
    return root


def make_output_folder(root: Path) -> None:
    """Create the folder ``root`` (at open: a file may have appeared there since the config loaded)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        output_folder(root)  # raises the ConfigError naming the file in the way
        raise


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a pipeline, or None when it can."""
    if _NAME.fullmatch(name):
        return None
    return f"{name!r} is not a valid name: use {NAME_RULE}"


def key_problem(key: str) -> str | None:
    """Why ``key`` could leave (or is not an object inside) the folder it is written under, or None."""
    if not key or key.endswith("/"):
        return f"key {key!r} names a folder, not an object"
    if key.startswith("/"):
        return f"key {key!r} starts with '/': keys are relative to their root"
    if "\0" in key:
        return f"key {key!r} contains a NUL character"
    if ".." in key.split("/"):
        return f"key {key!r} has a '..' segment, which would leave its root"
    return None


def path_under(root: Path, key: str) -> Path:
    """``root / key``, refused with ``SinkError`` unless it stays inside ``root``.

    The check is lexical: a symlink an operator placed inside the root is trusted, while nothing a
    key can spell (``..``, a leading ``/``) gets out.
    """
    problem = key_problem(key)
    if problem is not None:
        raise SinkError(f"refusing to write outside {root}: {problem}")
    base = os.path.normpath(os.path.abspath(root))
    target = os.path.normpath(os.path.join(base, key))
    if target == base or os.path.commonpath([base, target]) != base:
        raise SinkError(f"refusing to write outside {root}: key {key!r} resolves to {target}")
    return Path(target)


def classify_disk_error(exc: OSError, target: str | Path) -> RetryableError | SinkError | None:
    """What the engine should do about a failed write to ``target``; None leaves ``exc`` as it is.

    Decided by ``errno`` alone: messages differ between systems and languages.
    """
    reason = exc.strerror or str(exc)
    if exc.errno in STORAGE_ERRNOS:
        return RetryableError(f"cannot write {target}: {reason} (retrying; free space or fix the folder)",
                              kind="storage")
    if exc.errno in NAME_ERRNOS:
        return SinkError(f"cannot write {target}: {reason}; change the key template or the sink's path")
    return None


@contextmanager
def disk_errors_classified(target: str | Path) -> Iterator[None]:
    """Re-raise an ``OSError`` inside the block as :func:`classify_disk_error` says."""
    try:
        yield
    except OSError as exc:
        classified = classify_disk_error(exc, target)
        if classified is None:
            raise
        raise classified from exc


def write_atomically(root: Path, key: str, body: bytes, *, fsync: bool = True) -> Path:
    """Write ``body`` to ``root/key`` (temp file + rename, so readers never see half of it).

    Raises ``SinkError`` for a key outside ``root`` or a name the disk refuses, and
    ``RetryableError(kind="storage")`` for a full, read-only or failing disk.
    """
    target = path_under(root, key)
    with disk_errors_classified(target):
        _replace(target, body, fsync)
    return target


def _replace(target: Path, body: bytes, fsync: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(body)
            if fsync:
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if fsync:
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
