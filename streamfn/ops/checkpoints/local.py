"""``streamfn checkpoints show|reset|set`` on local checkpoints (``checkpoints.sqlite3``).

Positions are worked out from the local log when the pipeline reads one (trim horizon, tip, the
first record at a time); with another source only a sequence can be set, or the checkpoint be
forgotten (the shard then starts at the pipeline's ``starting_position``). Edits refuse while a
daemon runs the pipeline (its run lock), unless forced.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ...config import LoadedPipeline
from ...connectors.local.log import LocalLog
from ...connectors.local.source import LocalSourceConfig
from ...connectors.local.store import LocalCheckpointStoreConfig
from ...engine.run_lock import editing, is_held, local_store_path, lock_path
from ...errors import CheckpointError, ConfigError
from ...protocols.checkpoint import Checkpoint
from ...records import Position
from ..readonly import open_log, read_local_checkpoints
from .edits import Change, Row, Target, describe
from .sequence_check import check_local_sequence


def _store_path(loaded: LoadedPipeline) -> Path:
    path = local_store_path(loaded)
    assert path is not None, "only for pipelines with local checkpoints"
    return path


def _log(loaded: LoadedPipeline) -> tuple[LocalLog | None, str]:
    """The pipeline's local log opened read-only (None: not a local source, or never created), and its stream."""
    source = loaded.config.source
    if not isinstance(source, LocalSourceConfig):
        return None, ""
    ctx = loaded.context
    return open_log(ctx.resolve(source.path) if source.path else ctx.state_dir / "log.sqlite3"), source.stream


def show(loaded: LoadedPipeline) -> list[Row]:
    """Every shard of the log (or, for another source, every shard with a checkpoint); read-only."""
    stored = read_local_checkpoints(_store_path(loaded), loaded.config.name).checkpoints
    log, stream = _log(loaded)
    held = "a running daemon" if daemon_runs(loaded) else "-"
    try:
        shards = log.shard_ids(stream) if log is not None and stream in log.streams() else []
        rows = []
        for shard in sorted(set(shards) | set(stored)):
            detail = ""
            if log is not None and shard in shards:
                detail = f"log {log.first_retained_seq(stream, shard)}..{log.last_seq(stream, shard)}"
            rows.append(Row(shard_id=shard, checkpoint=describe(stored.get(shard)), held_by=held, detail=detail))
        return rows
    finally:
        if log is not None:
            log.close()


def daemon_runs(loaded: LoadedPipeline) -> bool:
    """Whether a daemon holds the pipeline's run lock now (read-only: no lock file is created)."""
    return is_held(lock_path(_store_path(loaded), loaded.config.name))


def plan(loaded: LoadedPipeline, target: Target, shards: Sequence[str] | None) -> dict[str, Checkpoint | None]:
    """The checkpoint each chosen shard gets (None: forgotten). Raises for an unknown shard, a
    sequence the log does not hold, or a target this pipeline's source cannot place."""
    stored = read_local_checkpoints(_store_path(loaded), loaded.config.name).checkpoints
    log, stream = _log(loaded)
    try:
        known = set(stored) | set(log.shard_ids(stream) if log is not None and stream in log.streams() else [])
        chosen = sorted(known) if shards is None else list(shards)
        unknown = [s for s in chosen if s not in known]
        if unknown:
            raise CheckpointError(f"unknown shard(s) {', '.join(unknown)} of pipeline {loaded.config.name!r}; "
                                  f"known: {', '.join(sorted(known)) or 'none'}")
        return {shard: _position(loaded, log, stream, shard, target) for shard in chosen}
    finally:
        if log is not None:
            log.close()


def _position(loaded: LoadedPipeline, log: LocalLog | None, stream: str, shard: str,
              target: Target) -> Checkpoint | None:
    if target.kind == "start":
        return None
    if log is None or shard not in log.shard_ids(stream):
        if target.kind == "sequence" and target.sequence is not None:
            return Checkpoint(position=Position(target.sequence))
        raise ConfigError("local checkpoints of a source other than the local log can be set to a sequence, "
                          "or reset to the pipeline's starting_position (no --to), not to "
                          f"{target.describe()}", file=str(loaded.path), field="checkpoints")
    first, tip = log.first_retained_seq(stream, shard), log.last_seq(stream, shard)
    if target.kind == "trim_horizon":
        after = first - 1
    elif target.kind == "latest":
        after = tip
    elif target.kind == "at_timestamp":
        assert target.timestamp is not None
        found = log.first_seq_at_or_after(stream, shard, target.timestamp)
        after = tip if found is None else found - 1
    else:
        assert target.sequence is not None
        check_local_sequence(loaded, stream, shard, target.sequence)
        after = target.sequence
    return Checkpoint(position=Position(after))


def changes(loaded: LoadedPipeline, planned: dict[str, Checkpoint | None]) -> list[Change]:
    stored = read_local_checkpoints(_store_path(loaded), loaded.config.name).checkpoints
    return [Change(shard_id=shard, before=describe(stored.get(shard)),
                   after="none (starts at the starting_position)" if cp is None else describe(cp))
            for shard, cp in planned.items()]


async def apply(loaded: LoadedPipeline, planned: dict[str, Checkpoint | None], *, force: bool,
                every_shard: bool = False) -> None:
    """Write ``planned`` in one transaction, holding the run lock (refused while a daemon holds it).

    An edit of ``every_shard`` also forgets which log the old checkpoints were made against: the new
    ones are positions in the log as it is now (or forgotten), and the next run binds it."""
    path = _store_path(loaded)
    configured = loaded.config.checkpoints
    config = configured if isinstance(configured, LocalCheckpointStoreConfig) else LocalCheckpointStoreConfig()
    with editing(loaded, path, force=force):
        store = config.build(loaded.context)
        await store.open()
        try:
            await store.overwrite(planned, forget_log=every_shard)
        finally:
            await store.close()

