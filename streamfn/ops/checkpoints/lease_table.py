"""Operators' edits of a lease table: ``streamfn checkpoints show | reset | set``.

Edits refuse while a worker still holds a lease it renews: an owned lease is watched for the
failover time, and one whose counter moves is live. ``force`` skips the check; a forced edit
bumps the counter, so the holder loses the lease at its next write and stops that shard.
Every edit clears the owner (the shard is free at once) and any pending or window state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import msgspec

from ...aws import AWS_DEFAULTS, AwsSettings
from ...connectors.lease_table.store import DynamoDBCheckpointStoreConfig
from ...connectors.lease_table.table import SHARD_END, Lease, LeaseTable
from ...errors import CheckpointError
from ...protocols.source import StartingPosition

_SENTINEL = {"trim_horizon": "TRIM_HORIZON", "latest": "LATEST", "at_timestamp": "AT_TIMESTAMP"}


class LeasesHeldError(CheckpointError):
    """Workers still hold (and renew) leases this edit would change."""

    def __init__(self, held: list[Lease]) -> None:
        self.held = held
        names = ", ".join(f"{lease.shard_id} (by {lease.owner})" for lease in held)
        super().__init__(f"leases are held by running workers: {names}; stop them first or force the edit")


class LeaseStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``streamfn checkpoints show``."""

    shard_id: str
    owner: str | None
    counter: int
    #: A sequence number, or a sentinel (SHARD_END, TRIM_HORIZON, LATEST, AT_TIMESTAMP).
    checkpoint: str
    sub_sequence: int
    parent_ids: tuple[str, ...]
    owner_switches_since_checkpoint: int
    pending_batches: int
    #: A reset waiting for the next run (``trim_horizon``, ``latest``, ``at_timestamp``).
    reset_to: str | None = None


def _status(lease: Lease) -> LeaseStatus:
    cp = lease.checkpoint
    if cp.shard_end:
        shown, sub = SHARD_END, 0
    elif cp.position is not None:
        shown, sub = str(cp.position.sequence), cp.position.sub_sequence
    else:
        shown, sub = lease.sentinel or "TRIM_HORIZON", 0
    return LeaseStatus(
        shard_id=lease.shard_id, owner=lease.owner, counter=lease.counter, checkpoint=shown, sub_sequence=sub,
        parent_ids=lease.parent_ids, owner_switches_since_checkpoint=lease.owner_switches,
        pending_batches=len(cp.pending), reset_to=lease.reset_to.kind if lease.reset_to else None,
    )


def _table(config: DynamoDBCheckpointStoreConfig, pipeline: str, aws: AwsSettings) -> LeaseTable:
    settings = config.settings(pipeline, aws)
    return LeaseTable(settings.table, prefix=settings.prefix, endpoint_url=settings.endpoint_url,
                      region=settings.region, profile=settings.profile)


async def show_checkpoints(config: DynamoDBCheckpointStoreConfig, pipeline: str,
                           aws: AwsSettings = AWS_DEFAULTS) -> list[LeaseStatus]:
    """Every lease of the pipeline, ordered by shard id; ``aws`` is the pipeline's ``[aws]`` section."""
    table = _table(config, pipeline, aws)
    await table.open()
    try:
        leases = await table.scan()
    finally:
        await table.close()
    return sorted((_status(lease) for lease in leases), key=lambda s: s.shard_id)


def render(rows: Sequence[LeaseStatus]) -> str:
    """A plain text table of ``rows`` for the terminal."""
    header = ("SHARD", "OWNER", "COUNTER", "CHECKPOINT", "PARENTS")
    lines = [header] + [
        (r.shard_id, r.owner or "-", str(r.counter),
         r.checkpoint + (f":{r.sub_sequence}" if r.sub_sequence else "") + (f" (reset to {r.reset_to})"
                                                                             if r.reset_to else ""),
         ",".join(r.parent_ids) or "-")
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


async def reset_checkpoints(
    config: DynamoDBCheckpointStoreConfig, pipeline: str, to: StartingPosition, *,
    shards: Sequence[str] | None = None, force: bool = False, watch: float | None = None,
    aws: AwsSettings = AWS_DEFAULTS,
) -> list[str]:
    """Forget the checkpoints of ``shards`` (all by default): they restart at ``to`` on the next run.

    Returns the shard ids reset. Raises LeasesHeldError if a live worker holds one of them.
    """
    if to.kind == "at_timestamp" and to.timestamp is None:
        raise CheckpointError("a reset to at_timestamp needs a timestamp")
    values: dict[str, Any] = {":cp": {"S": _SENTINEL[to.kind]}, ":zero": {"N": "0"}, ":start": {"S": to.kind}}
    sets = ["checkpoint = :cp", "checkpointSubSequenceNumber = :zero", "ownerSwitchesSinceCheckpoint = :zero",
            "streamfnStart = :start"]
    removes = ["leaseOwner", "streamfnPending", "streamfnWindowState"]
    if to.timestamp is not None:
        sets.append("streamfnStartTimestamp = :at")
        values[":at"] = {"N": repr(to.timestamp)}
    else:
        removes.append("streamfnStartTimestamp")
    return await _edit(config, pipeline, shards, sets, removes, values, force=force, watch=watch, aws=aws)


async def set_checkpoint(
    config: DynamoDBCheckpointStoreConfig, pipeline: str, shard_id: str, sequence: int, sub_sequence: int = 0, *,
    force: bool = False, watch: float | None = None, aws: AwsSettings = AWS_DEFAULTS,
) -> None:
    """Set one shard's checkpoint: processing resumes strictly after ``sequence``/``sub_sequence``."""
    values: dict[str, Any] = {":cp": {"S": str(sequence)}, ":sub": {"N": str(sub_sequence)}, ":zero": {"N": "0"}}
    sets = ["checkpoint = :cp", "checkpointSubSequenceNumber = :sub", "ownerSwitchesSinceCheckpoint = :zero"]
    removes = ["leaseOwner", "streamfnPending", "streamfnWindowState", "streamfnStart", "streamfnStartTimestamp"]
    await _edit(config, pipeline, [shard_id], sets, removes, values, force=force, watch=watch, aws=aws)


async def _edit(
    config: DynamoDBCheckpointStoreConfig, pipeline: str, shards: Sequence[str] | None,
    sets: list[str], removes: list[str], values: dict[str, Any], *, force: bool, watch: float | None,
    aws: AwsSettings,
) -> list[str]:
    table = _table(config, pipeline, aws)
    await table.open()
    try:
        leases = _select(await table.scan(), shards)
        if not force:
            leases = await _not_held(table, leases, config.failover_time if watch is None else watch)
        for lease in leases:
            await table.overwrite(lease, sets, removes, values, force=force)
    finally:
        await table.close()
    return [lease.shard_id for lease in leases]


def _select(leases: list[Lease], shards: Sequence[str] | None) -> list[Lease]:
    if shards is None:
        return leases
    by_shard = {lease.shard_id: lease for lease in leases}
    missing = [s for s in shards if s not in by_shard]
    if missing:
        raise CheckpointError(f"no lease for shard(s) {', '.join(missing)} in this pipeline")
    return [by_shard[s] for s in shards]


async def _not_held(table: LeaseTable, leases: list[Lease], watch: float) -> list[Lease]:
    """The same leases re-read after watching owned ones; raise if any owned counter moved."""
    if not any(lease.owner for lease in leases):
        return leases
    await asyncio.sleep(watch)
    again = {lease.key: lease for lease in await table.scan()}
    live = [lease for lease in leases if lease.owner and (lease.key not in again
                                                          or again[lease.key].counter != lease.counter)]
    if live:
        raise LeasesHeldError(live)
    return [again[lease.key] for lease in leases]
