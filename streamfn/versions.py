"""Published handler versions and the aliases that name them, under ``<state_dir>/versions/``.

``streamfn publish`` copies the handler's top-level module file or package directory into
``versions/<n>/code/`` with a manifest (``version.json``: content hash, handler, when). A version
is never changed once its directory is in place: publishing is a copy into a temporary directory
renamed to its number, so a crash leaves no half version, and two publishers racing get two numbers.
Publishing content that is already a version returns that version. An alias is one small JSON file
(``versions/aliases/<name>.json``) replaced atomically, so a running daemon sees either the old or
the new version, and notices a change from the file's stat alone.

Each version is imported under its own package name (``_streamfn_versions.<pipeline>_v<n>_<hash>``),
so two versions of the same module live side by side in one process with separate globals. Inside
a version, relative imports (``from . import util``) resolve to that version's own files; an
absolute import of another module (installed packages, or the unversioned working copy) is shared,
so a handler spread over several top-level modules should be a package to be frozen whole.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from .engine.invoke import handler_in
from .errors import ConfigError, HandlerLoadError
from .paths import write_atomically
from .timefmt import iso_time

VERSIONS_DIR = "versions"
ALIASES_DIR = "aliases"
MANIFEST = "version.json"
#: The package every loaded version's modules live under (never a real module on disk).
IMPORT_ROOT = "_streamfn_versions"
#: Lambda's alias rule: letters, digits, '-' and '_', 1-128, not all digits (those are versions).
_ALIAS = re.compile(r"(?!^[0-9]+$)[A-Za-z0-9_-]{1,128}")
_SKIPPED = ("__pycache__",)

#: Pipeline name -> the version its latest batch started with (the metrics endpoint reads it).
ACTIVE_VERSIONS: dict[str, int] = {}


class Version(msgspec.Struct, frozen=True, kw_only=True):
    """One published version: its number, its content hash, and the handler it was published with."""

    version: int
    sha256: str
    handler: str
    published_at: float
    #: Where the code was copied from (for people; never read back).
    source: str
    format: int = 1


class Alias(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: int
    updated_at: float


def alias_problem(name: str) -> str | None:
    """Why ``name`` cannot name an alias, or None when it can."""
    if _ALIAS.fullmatch(name):
        return None
    return f"{name!r} is not a valid alias: use 1-128 letters, digits, '-' or '_', not only digits"


def version_ref_problem(ref: int | str | None) -> str | None:
    """Why ``handler_version = ref`` can never name a version, or None (existence is checked later)."""
    if ref is None or (isinstance(ref, str) and ref.isdigit()):
        return None
    if isinstance(ref, int):
        return None if ref >= 1 else "a version number is 1 or more"
    return alias_problem(ref)


def handler_source(handler: str, search_dirs: Sequence[Path]) -> Path:
    """The top-level module file or package directory that ``handler`` (``module:function``) is
    imported from, looked up in ``search_dirs`` in the order ``run`` imports it."""
    module_name, sep, attr = handler.partition(":")
    if not sep or not module_name or not attr:
        raise HandlerLoadError(f"handler {handler!r} must look like 'module:function'")
    top = module_name.split(".", 1)[0]
    for directory in search_dirs:
        package, module = directory / top, directory / f"{top}.py"
        if package.is_dir():
            return package.resolve()
        if module.is_file():
            return module.resolve()
    where = ", ".join(str(d) for d in search_dirs)
    raise HandlerLoadError(f"handler {handler!r}: no {top}.py or {top}/ in {where}: only a module or package "
                           "beside the config (or in the working directory) can be published")


def _files(source: Path) -> Iterator[tuple[str, Path]]:
    """``(relative path, file)`` for every file of a module or package, caches left out, sorted."""
    if source.is_file():
        yield source.name, source
        return
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source.parent)
        if any(part in _SKIPPED or part.startswith(".") for part in relative.parts) or path.suffix == ".pyc":
            continue
        if path.is_file():
            yield relative.as_posix(), path


def content_hash(source: Path) -> str:
    """SHA-256 over every file's relative path and bytes: equal code, equal hash, wherever it lies."""
    digest = hashlib.sha256()
    for relative, path in _files(source):
        body = path.read_bytes()
        digest.update(f"{relative}\0{len(body)}\0".encode())
        digest.update(body)
    return digest.hexdigest()


class VersionStore:
    """The versions and aliases of one pipeline's state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / VERSIONS_DIR
        self.aliases_dir = self.root / ALIASES_DIR

    def code_dir(self, number: int) -> Path:
        return self.root / str(number) / "code"

    def alias_path(self, name: str) -> Path:
        return self.aliases_dir / f"{name}.json"

    def versions(self) -> list[Version]:
        """Every published version, oldest first (a directory without a manifest is not one yet)."""
        if not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            if entry.name.isdigit() and (entry / MANIFEST).is_file():
                found.append(self.version(int(entry.name)))
        return sorted(found, key=lambda v: v.version)

    def version(self, number: int) -> Version:
        path = self.root / str(number) / MANIFEST
        try:
            return msgspec.json.decode(path.read_bytes(), type=Version)
        except FileNotFoundError:
            raise ConfigError(f"handler version {number} is not published (see `streamfn versions`)") from None
        except (OSError, msgspec.DecodeError) as exc:
            raise ConfigError(f"handler version {number}: unreadable manifest {path}: {exc}") from None

    def aliases(self) -> list[Alias]:
        if not self.aliases_dir.is_dir():
            return []
        return sorted((self.alias(p.stem) for p in self.aliases_dir.glob("*.json")), key=lambda a: a.name)

    def alias(self, name: str) -> Alias:
        path = self.alias_path(name)
        try:
            return msgspec.json.decode(path.read_bytes(), type=Alias)
        except FileNotFoundError:
            raise ConfigError(f"alias {name!r} does not exist: create it with `streamfn alias set CONFIG {name} "
                              "VERSION`") from None
        except (OSError, msgspec.DecodeError) as exc:
            raise ConfigError(f"alias {name!r}: unreadable file {path}: {exc}") from None

    def resolve(self, ref: int | str) -> int:
        """The version number ``ref`` names: a number (or its digits), or an alias."""
        if isinstance(ref, int) or ref.isdigit():
            number = int(ref)
            self.version(number)  # refuse a number that was never published
            return number
        problem = alias_problem(ref)
        if problem:
            raise ConfigError(problem)
        return self.alias(ref).version

    def publish(self, handler: str, search_dirs: Sequence[Path]) -> tuple[Version, bool]:
        """Freeze the handler's code as the next version; ``(version, False)`` when identical code
        is already published."""
        source = handler_source(handler, search_dirs)
        digest = content_hash(source)
        for existing in self.versions():
            if existing.sha256 == digest and existing.handler == handler:
                return existing, False
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".publish-", dir=self.root))
        try:
            code = staging / "code"
            code.mkdir()
            for relative, path in _files(source):
                target = code / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
            if content_hash(code / source.name) != digest:
                raise ConfigError(f"{source} changed while it was being published: publish again")
            return self._claim_number(staging, handler, digest, source), True
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _claim_number(self, staging: Path, handler: str, digest: str, source: Path) -> Version:
        """Rename ``staging`` to the next free number; a rename onto an existing version fails,
        so a concurrent publisher that took the number makes this one try the next."""
        number = max((v.version for v in self.versions()), default=0) + 1
        while True:
            version = Version(version=number, sha256=digest, handler=handler, published_at=time.time(),
                              source=str(source))
            (staging / MANIFEST).write_bytes(msgspec.json.encode(version))
            try:
                os.rename(staging, self.root / str(number))
            except OSError:
                if not (self.root / str(number)).exists():
                    raise
                number += 1
                continue
            return version

    def set_alias(self, name: str, ref: int | str) -> Alias:
        """Point ``name`` at a published version (atomically: readers see the old or the new)."""
        problem = alias_problem(name)
        if problem:
            raise ConfigError(problem)
        number = self.resolve(ref)
        alias = Alias(name=name, version=number, updated_at=time.time())
        write_atomically(self.aliases_dir, f"{name}.json", msgspec.json.encode(alias))
        return alias

    def describe(self) -> dict[str, Any]:
        """Versions and aliases as a JSON-ready document (``streamfn versions``)."""
        aliases = self.aliases()
        return {
            "versions": [{"version": v.version, "sha256": v.sha256, "handler": v.handler,
                          "published_at": iso_time(v.published_at),
                          "aliases": [a.name for a in aliases if a.version == v.version]}
                         for v in self.versions()],
            "aliases": {a.name: a.version for a in aliases},
        }


def import_name(pipeline: str, version: Version) -> str:
    """The package a version's modules are imported under: unique per pipeline, number and content."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", pipeline)
    return f"{IMPORT_ROOT}.{safe}_v{version.version}_{version.sha256[:12]}"


def load_version(store: VersionStore, number: int, pipeline: str) -> Callable[..., Any]:
    """The handler function of version ``number``, from its own copy of the code, imported under a
    package name of its own (see the module docstring); the same object on every call."""
    version = store.version(number)
    package = import_name(pipeline, version)
    _ensure_package(IMPORT_ROOT, [])
    _ensure_package(package, [str(store.code_dir(number))])
    module_name, _, attr_path = version.handler.partition(":")
    try:
        module = importlib.import_module(f"{package}.{module_name}")
    except Exception as exc:
        raise HandlerLoadError(f"handler version {number} ({version.handler}): cannot import: {exc!r}") from exc
    return handler_in(module, attr_path, f"handler version {number} ({version.handler})")


def _ensure_package(name: str, path: list[str]) -> None:
    """A bare package in ``sys.modules`` whose submodules are found in ``path`` (no files needed)."""
    if name in sys.modules:
        return
    package = types.ModuleType(name, "streamfn: published handler versions")
    package.__path__ = path
    package.__package__ = name
    sys.modules[name] = package
