"""What a reload (SIGHUP) changes: which pipeline files to read, and which pipelines to start, stop
or restart. Decisions only; the daemon performs them."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import msgspec

from ..errors import ConfigError

#: The file types ``load_pipeline`` reads; a config directory contributes its files of these types.
PIPELINE_SUFFIXES = (".toml", ".yaml", ".yml", ".json")

K = TypeVar("K", bound=Hashable)


class ReloadPlan(msgspec.Struct, frozen=True, kw_only=True):
    """Keys of pipelines to stop (file gone), start (new file), restart (settings changed) or keep."""

    stop: tuple[Path, ...] = ()
    start: tuple[Path, ...] = ()
    restart: tuple[Path, ...] = ()
    keep: tuple[Path, ...] = ()

    @property
    def changes(self) -> bool:
        return bool(self.stop or self.start or self.restart)


def plan_reload(running: Mapping[Path, object], wanted: Mapping[Path, object],
                refused: Iterable[Path] = ()) -> ReloadPlan:
    """Compare the running pipelines' settings with the files' new ones.

    A pipeline whose new file was ``refused`` (invalid) keeps running as it is; one whose settings
    are equal (only comments or layout changed) is kept without a restart.
    """
    refused = set(refused)
    stop = [key for key in running if key not in wanted and key not in refused]
    start = [key for key in wanted if key not in running]
    restart = [key for key in wanted if key in running and wanted[key] != running[key]]
    keep = [key for key in running if key not in stop and key not in restart]
    return ReloadPlan(stop=tuple(sorted(stop)), start=tuple(sorted(start)), restart=tuple(sorted(restart)),
                      keep=tuple(sorted(keep)))


def pipeline_files(arguments: Iterable[str | Path]) -> list[Path]:
    """The pipeline files named by ``run``'s arguments: a file as given, a directory as the pipeline
    files directly in it. Read again on reload, so a file added to or removed from a directory
    starts or stops its pipeline; a named file that is missing is an error."""
    found = expand_directories(arguments)
    for path in found:
        if not path.exists():
            raise ConfigError("no such pipeline file or directory", file=str(path))
    return list(dict.fromkeys(path.resolve() for path in found))  # a file named twice runs once


def expand_directories(arguments: Iterable[str | Path]) -> list[Path]:
    """Each directory replaced by its pipeline files (sorted; hidden files and editors' backups skipped)."""
    found: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found.extend(sorted(child for child in path.iterdir()
                                if child.suffix in PIPELINE_SUFFIXES and not child.name.startswith(".")
                                and child.is_file()))
        else:
            found.append(path)
    return found
