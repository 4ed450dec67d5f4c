"""``streamfn status``: per shard, the checkpoint, the lag behind the source's tip, the lease owner, blocked or not.

Checkpoints and tips come from the checkpoint store and the source, so this works with no daemon
running. It only reads: local files are opened read-only and never created (``readonly.py``).
Whether a shard is blocked lives only in a running daemon: it is read from its ``/metrics``
endpoint when one answers, else shown as unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from collections.abc import Sequence

import msgspec

from ..aws import error_code
from ..config import LoadedPipeline
from ..connectors.lease_table.store import DynamoDBCheckpointStoreConfig
from ..connectors.local.log import shard_id_of
from ..connectors.local.source import LocalSourceConfig
from ..errors import CheckpointError
from ..protocols.checkpoint import Checkpoint, CheckpointStore
from ..protocols.source import ShardTip, Source
from .parts import build_source, build_store, local_log_path, local_store_path, source_kind
from .readonly import check_identity, open_log, read_local_checkpoints


class ShardStatus(msgspec.Struct, kw_only=True):
    """One row of the status table."""

    pipeline: str
    shard_id: str
    parents: tuple[str, ...] = ()
    checkpoint: str | None = None
    tip: int | None = None
    lag: int | None = None
    lease_owner: str | None = None
    #: Seconds blocked on retries per a running daemon (0: not blocked; None: no daemon answered).
    blocked_seconds: float | None = None
    attempt: int | None = None


def show_checkpoint(checkpoint: Checkpoint | None) -> str | None:
    if checkpoint is None:
        return None
    if checkpoint.shard_end:
        return "SHARD_END"
    position = checkpoint.position
    if position is None:
        return None
    return str(position)


Tip = ShardTip


def lag_of(checkpoint: Checkpoint | None, tip: Tip | None) -> int | None:
    """Records between the checkpoint and the tip, for sources with dense sequences (local log, Kafka)."""
    if tip is None:
        return None
    if checkpoint is not None and checkpoint.shard_end:
        return 0
    done = checkpoint.position.sequence if checkpoint and checkpoint.position else tip.before_first
    return max(0, tip.last - max(done, tip.before_first))


async def collect(loaded: LoadedPipeline) -> list[ShardStatus]:
    """The status rows of one pipeline, read from its source and checkpoint store.

    Read-only: local state (log, checkpoint file) is read in place and never created or written;
    a pipeline that never ran shows its configured shards with no checkpoint.
    """
    if source_kind(loaded.config.source) == "local":
        return await _collect_local(loaded)
    source = build_source(loaded)
    await source.open()
    try:
        shards = await source.list_shards()
        shard_ids = [s.shard_id for s in shards]
        tips = await _tips(source, shard_ids)
        store_path = local_store_path(loaded)
        owners: dict[str, str] = {}
        if store_path is not None:
            checkpoints = read_local_checkpoints(store_path, loaded.config.name).checkpoints
        else:
            checkpoints, owners = await _from_store(loaded, source, shard_ids)
        return [_row(loaded, shard.shard_id, tuple(shard.parent_ids), checkpoints.get(shard.shard_id),
                     tips.get(shard.shard_id), owners.get(shard.shard_id)) for shard in shards]
    finally:
        await source.close()


async def _collect_local(loaded: LoadedPipeline) -> list[ShardStatus]:
    """Rows of a pipeline on the local log, every file opened read-only (``readonly.py``)."""
    config = loaded.config.source
    assert isinstance(config, LocalSourceConfig)
    path = local_log_path(loaded)
    log = None if path is None else open_log(path)
    try:
        if log is None or config.stream not in log.streams():
            shard_ids, tips, log_id = [shard_id_of(i) for i in range(config.shards)], {}, None
        else:
            shard_ids = log.shard_ids(config.stream)
            tips = {shard_id: Tip(log.last_seq(config.stream, shard_id),
                                  log.first_retained_seq(config.stream, shard_id) - 1) for shard_id in shard_ids}
            log_id = log.log_id
    finally:
        if log is not None:
            log.close()
    store_path = local_store_path(loaded)
    owners: dict[str, str] = {}
    if store_path is None:
        checkpoints, owners = await _from_store(loaded, None, shard_ids)
    else:
        state = read_local_checkpoints(store_path, loaded.config.name)
        # another log's checkpoints would show a false lag: refuse them as `run` would
        check_identity(state, log_id, {s: tip.last for s, tip in tips.items()}, pipeline=loaded.config.name,
                       path=store_path)
        checkpoints = state.checkpoints
    return [_row(loaded, shard_id, (), checkpoints.get(shard_id), tips.get(shard_id), owners.get(shard_id))
            for shard_id in shard_ids]


async def _from_store(loaded: LoadedPipeline, source: Source | None, shard_ids: list[str]
                      ) -> tuple[dict[str, Checkpoint], dict[str, str]]:
    """Checkpoints and lease owners from a remote store (DynamoDB, Kafka group); a lease table that
    does not exist yet is not created here (no checkpoints, no owners)."""
    configured = loaded.config.checkpoints
    if isinstance(configured, DynamoDBCheckpointStoreConfig) and configured.create_table:
        config = msgspec.structs.replace(loaded.config, checkpoints=msgspec.structs.replace(configured,
                                                                                            create_table=False))
        loaded = LoadedPipeline(config=config, path=loaded.path)
    store = build_store(loaded, source)
    try:
        await store.open()
    except CheckpointError as exc:
        if not _missing_table(exc):
            raise
        return {}, {}
    try:
        owners = await _lease_owners(store)
        checkpoints = {}
        for shard_id in shard_ids:
            checkpoint = await store.load(shard_id)
            if checkpoint is not None:
                checkpoints[shard_id] = checkpoint
        return checkpoints, owners
    finally:
        await store.close()


def _missing_table(exc: BaseException | None) -> bool:
    """Whether DynamoDB said the table does not exist, anywhere in the chain of causes."""
    while exc is not None:
        if error_code(exc) == "ResourceNotFoundException":
            return True
        exc = exc.__cause__
    return False


def _row(loaded: LoadedPipeline, shard_id: str, parents: tuple[str, ...], checkpoint: Checkpoint | None,
         tip: Tip | None, owner: str | None) -> ShardStatus:
    return ShardStatus(
        pipeline=loaded.config.name, shard_id=shard_id, parents=parents, checkpoint=show_checkpoint(checkpoint),
        tip=None if tip is None else tip.last, lag=lag_of(checkpoint, tip), lease_owner=owner,
    )


async def _lease_owners(store: CheckpointStore) -> dict[str, str]:
    """Lease owners when the store keeps leases; empty for stores without leases."""
    return await store.lease_owners() or {}


async def _tips(source: Source, shard_ids: list[str]) -> dict[str, Tip]:
    """Each shard's tip where the source can tell cheaply (the local log, Kafka's end offsets)."""
    return await source.shard_tips(shard_ids)


def live_state(url: str, timeout: float = 2.0) -> dict[tuple[str, str], tuple[float, int]] | None:
    """``(pipeline, shard) -> (blocked seconds, attempt)`` from a daemon's /metrics; None if it is unreachable."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=timeout) as response:
            text = response.read().decode()
    except OSError:
        return None
    blocked: dict[tuple[str, str], float] = {}
    attempts: dict[tuple[str, str], int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.labels.get("pipeline", ""), sample.labels.get("shard", ""))
            if sample.name == "streamfn_shard_blocked_seconds":
                blocked[key] = sample.value
            elif sample.name == "streamfn_attempt":
                attempts[key] = int(sample.value)
    return {key: (seconds, attempts.get(key, 0)) for key, seconds in blocked.items()}


def add_live_state(rows: list[ShardStatus], live: dict[tuple[str, str], tuple[float, int]]) -> None:
    for row in rows:
        state = live.get((row.pipeline, row.shard_id))
        if state is not None:
            row.blocked_seconds, row.attempt = state


def _blocked_text(row: ShardStatus, daemon_seen: bool) -> str:
    if row.blocked_seconds is None:
        return "idle" if daemon_seen else "?"
    if row.blocked_seconds <= 0:
        return "no"
    return f"YES {row.blocked_seconds:.0f}s (attempt {row.attempt})"


def render_table(rows: Sequence[ShardStatus], *, daemon_seen: bool) -> str:
    """A plain text table, one line per shard."""
    header = ("PIPELINE", "SHARD", "CHECKPOINT", "TIP", "LAG", "LEASE OWNER", "BLOCKED")
    lines = [header]
    for row in rows:
        lines.append((
            row.pipeline, row.shard_id, row.checkpoint or "-", "-" if row.tip is None else str(row.tip),
            "-" if row.lag is None else str(row.lag), row.lease_owner or "-", _blocked_text(row, daemon_seen),
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                     for line in lines) + "\n"


def status(configs: Sequence[LoadedPipeline], *, metrics_url: str | None) -> tuple[list[ShardStatus], bool]:
    """Every pipeline's rows, with the daemon's live state merged in when ``metrics_url`` answers."""

    async def gather() -> list[ShardStatus]:
        rows: list[ShardStatus] = []
        for loaded in configs:
            rows.extend(await collect(loaded))
        return rows

    rows = asyncio.run(gather())
    live = None
    if metrics_url:
        with contextlib.suppress(ValueError):
            live = live_state(metrics_url)
    if live is not None:
        add_live_state(rows, live)
    return rows, live is not None
