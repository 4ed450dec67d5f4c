"""Calling a published handler version, following its alias at batch boundaries.

A pipeline with ``handler_version`` gets a :class:`VersionedInvoker` instead of a plain
:class:`~streamfn.engine.invoke.Invoker`: the same ``slot()`` per lane, whose slot picks the version
at the start of each batch and keeps it for every call of that batch (retries, bisected halves,
the rest after a partial failure), so a batch is never split between two versions. The alias file
is stat'ed at most every ``check_interval`` seconds, shared by every lane of the pipeline.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import HandlerLoadError, RetryableError, StreamfnError
from ..handler_api import Context
from ..records import Batch, Position
from ..versions import ACTIVE_VERSIONS, VersionStore, load_version
from .invoke import CallResult, Invoker, Slot

log = logging.getLogger("streamfn.versions")

def versioned_invoker(state_dir: Path, ref: int | str, pipeline: str,
                      build: Callable[[Callable[..., Any]], Invoker]) -> VersionedInvoker:
    """The invoker of a pipeline with ``handler_version = ref``; ``build`` makes a version's Invoker."""
    store = VersionStore(state_dir)
    return VersionedInvoker(store, VersionPicker(store, ref), build, pipeline=pipeline)


class VersionPicker:
    """Which version to call now: a fixed number, or the one an alias file names.

    The alias file is replaced atomically on every change (new inode), so its stat tells whether it
    changed; it is read only then. A missing or broken alias file keeps the version in use, with a
    warning, rather than stopping the pipeline.
    """

    def __init__(self, store: VersionStore, ref: int | str, *, check_interval: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self.alias: str | None = None if isinstance(ref, int) or ref.isdigit() else ref
        self._clock = clock
        self._interval = check_interval
        self._next_check = 0.0
        self._stat: tuple[int, int, int] | None = None
        self.version = store.resolve(ref)
        if self.alias is not None:
            self._stat = self._stat_of_alias()

    def current(self) -> int:
        """The version to start the next batch with (cheap: a clock read, a stat every interval)."""
        if self.alias is None:
            return self.version
        now = self._clock()
        if now < self._next_check:
            return self.version
        self._next_check = now + self._interval
        stat = self._stat_of_alias()
        if stat != self._stat:
            self._stat = stat
            try:
                self.version = self._store.alias(self.alias).version
            except StreamfnError as exc:
                log.warning("alias unreadable; keeping handler version %d: %s", self.version, exc,
                            extra={"alias": self.alias, "version": self.version})
        return self.version

    def _stat_of_alias(self) -> tuple[int, int, int] | None:
        assert self.alias is not None
        try:
            stat = os.stat(self._store.alias_path(self.alias))
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_ino, stat.st_size


class VersionedInvoker:
    """Offers :meth:`slot` like an Invoker; each version gets its own Invoker, built once."""

    def __init__(self, store: VersionStore, picker: VersionPicker, build: Callable[[Callable[..., Any]], Invoker],
                 *, pipeline: str) -> None:
        self._store = store
        self.picker = picker
        self._build = build
        self.pipeline = pipeline
        self._invokers: dict[int, Invoker] = {}
        self.invoker(picker.version)  # a version that cannot load stops the pipeline at start-up
        ACTIVE_VERSIONS[pipeline] = picker.version
        log.info("handler version %d", picker.version,
                 extra={"pipeline": pipeline, "version": picker.version, "alias": picker.alias})

    def invoker(self, version: int) -> Invoker:
        found = self._invokers.get(version)
        if found is None:
            found = self._invokers[version] = self._build(load_version(self._store, version, self.pipeline))
        return found

    def slot(self) -> VersionedSlot:
        return VersionedSlot(self)


class VersionedSlot:
    """One lane's slot: the version is chosen when a batch starts and kept for all its calls.

    A call starts a new batch when its first record lies past the last record of the batch in
    progress (retries and splits of a batch only ever cover records of it). A version that cannot
    be imported raises RetryableError: the shard shows as blocked and restarts from its checkpoint,
    without failing (or disposing of) any record, until the alias names a version that loads.
    """

    __slots__ = ("_batch_end", "_owner", "_slot", "_slots", "version")

    def __init__(self, owner: VersionedInvoker) -> None:
        self._owner = owner
        self.version = owner.picker.version
        self._slot: Slot = owner.invoker(self.version).slot()
        self._slots: dict[int, Slot] = {self.version: self._slot}
        self._batch_end: Position | None = None

    @property
    def busy(self) -> bool:
        """A timed-out call of any version is still running in this lane."""
        return any(slot.busy for slot in self._slots.values())

    async def wait_idle(self) -> None:
        for slot in list(self._slots.values()):
            await slot.wait_idle()

    async def call(self, batch: Batch, context: Context) -> CallResult:
        if batch and (self._batch_end is None or batch.position_at(0) > self._batch_end):
            self._start_batch(batch)
            self._batch_end = batch.position_at(-1)
        context.function_version = str(self.version)
        context.alias = self._owner.picker.alias
        return await self._slot.call(batch, context)

    def _start_batch(self, batch: Batch) -> None:
        version = self._owner.picker.current()
        if version == self.version:
            return
        try:
            invoker = self._owner.invoker(version)
        except HandlerLoadError as exc:
            raise RetryableError(f"{exc}; the shard waits until the alias names a version that loads",
                                 kind="handler version") from exc
        previous, self.version = self.version, version
        self._slot = self._slots.get(version) or invoker.slot()
        self._slots = {version: self._slot, **{v: s for v, s in self._slots.items() if s.busy}}
        ACTIVE_VERSIONS[self._owner.pipeline] = version
        log.info("handler version %d -> %d", previous, version,
                 extra={"pipeline": self._owner.pipeline, "shard": batch.shard_id, "version": version,
                        "alias": self._owner.picker.alias})
