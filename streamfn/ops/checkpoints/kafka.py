"""``streamfn checkpoints show|reset|set`` on a Kafka source's consumer group: checkpoints are the
group's committed offsets (the next offset to read, so "after sequence N" commits N + 1).

An edit is refused while the group has members (a running worker would commit over it, and brokers
refuse commits from outside an active group); ``force`` tries anyway, and the broker has the last word.
``show`` also says when the broker drops offset commit metadata (the store's probe, which commits
only in the probe group): the pending batch bounds a checkpoint lists are then not kept.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from ...config import LoadedPipeline
from ...connectors.kafka.metadata_probe import SETTING, broker_keeps_commit_metadata
from ...connectors.kafka.offsets import decode_checkpoint
from ...connectors.kafka.partitions import partition_of, shard_id_of
from ...connectors.kafka.source import KafkaSourceConfig
from ...errors import CheckpointError
from ...protocols.checkpoint import Checkpoint
from .edits import Change, Row, Target, describe


class GroupActive(CheckpointError):
    """The consumer group has members: a worker runs the partitions."""


def _config(loaded: LoadedPipeline) -> KafkaSourceConfig:
    source = loaded.config.source
    assert isinstance(source, KafkaSourceConfig), "only for Kafka sources"
    return source


@asynccontextmanager
async def _clients(loaded: LoadedPipeline) -> AsyncIterator[tuple[Any, Any]]:
    """A consumer of the group that never joins it (offsets are read and committed through it) and an admin client."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient

    config = _config(loaded)
    options = config.consumer_options(lambda p: str(loaded.context.resolve(p)))
    consumer = AIOKafkaConsumer(**options)
    admin = AIOKafkaAdminClient(**{k: options[k] for k in ("bootstrap_servers", "client_id", "security_protocol",
                                                           "sasl_mechanism", "sasl_plain_username",
                                                           "sasl_plain_password")},
                                **({"ssl_context": options["ssl_context"]} if "ssl_context" in options else {}))
    await consumer.start()
    try:
        await admin.start()
        try:
            yield consumer, admin
        finally:
            await admin.close()
    finally:
        await consumer.stop()


async def _partitions(consumer: Any, topic: str) -> list[Any]:
    from aiokafka.structs import TopicPartition

    await consumer.topics()  # fetches the cluster's metadata, which partitions_for_topic reads
    found = consumer.partitions_for_topic(topic)
    if not found:
        raise CheckpointError(f"topic {topic!r} has no partitions (does it exist?)")
    return [TopicPartition(topic, p) for p in sorted(found)]


async def _members(admin: Any, group: str) -> list[str]:
    """The client ids of the group's members (empty: nobody runs the partitions)."""
    described = await admin.describe_consumer_groups([group])
    members: list[str] = []
    for response in described:
        for group_entry in response.groups:
            for member in group_entry[5]:  # (error, group, state, protocol type, protocol, members, ...)
                members.append(f"{member[0]} ({member[1]} at {member[2]})" if len(member) > 2 else str(member[0]))
    return members


async def _committed(admin: Any, group: str, tps: list[Any]) -> dict[Any, Checkpoint]:
    offsets = await admin.list_consumer_group_offsets(group, partitions=tps)  # named: not every broker lists all
    return {tp: decode_checkpoint(found.offset, found.metadata) for tp, found in offsets.items() if found.offset >= 0}


async def show(loaded: LoadedPipeline) -> list[Row]:
    config = _config(loaded)
    async with _clients(loaded) as (consumer, admin):
        tps = await _partitions(consumer, config.topic)
        committed = await _committed(admin, config.group_id, tps)
        members = await _members(admin, config.group_id)
        first, end = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
        try:
            kept: bool | None = await broker_keeps_commit_metadata(
                config.consumer_options(lambda p: str(loaded.context.resolve(p))), config.topic)
        except CheckpointError:
            kept = None  # the probe group is not ours to commit in: say so, show the rest
    held = f"group {config.group_id}: {len(members)} member(s)" if members else "-"
    lost = {True: "", False: f"; broker drops commit metadata (no pending bounds kept, {SETTING})",
            None: "; commit metadata not probed (commit refused in the probe group)"}[kept]
    return [Row(shard_id=shard_id_of(tp.topic, tp.partition), checkpoint=describe(committed.get(tp)), held_by=held,
                detail=f"offsets {first[tp]}..{end[tp] - 1}{lost}") for tp in tps]


async def edit(loaded: LoadedPipeline, target: Target, shards: Sequence[str] | None, *, force: bool,
               dry_run: bool) -> list[Change]:
    """Commit the group's offsets for ``shards`` (all partitions by default) at ``target``."""
    from aiokafka.errors import KafkaError
    from aiokafka.structs import OffsetAndMetadata

    config = _config(loaded)
    async with _clients(loaded) as (consumer, admin):
        tps = await _partitions(consumer, config.topic)
        chosen = tps if shards is None else _chosen(config.topic, tps, shards)
        members = await _members(admin, config.group_id)
        if members and not force and not dry_run:
            raise GroupActive(f"consumer group {config.group_id!r} has {len(members)} active member(s): "
                              f"{', '.join(members)}; stop the workers first (or --force: the broker may still "
                              "refuse a commit from outside an active group)")
        committed = await _committed(admin, config.group_id, tps)
        offsets = await _offsets(consumer, chosen, target)
        changes = [Change(shard_id=shard_id_of(tp.topic, tp.partition), before=describe(committed.get(tp)),
                          after=describe(decode_checkpoint(offsets[tp], ""))) for tp in chosen]
        if not dry_run:
            consumer.assign(chosen)
            try:
                await consumer.commit({tp: OffsetAndMetadata(offsets[tp], "") for tp in chosen})
            except KafkaError as exc:
                raise CheckpointError(f"the broker refused the offsets of group {config.group_id!r}: {exc!r}; "
                                      "stop the group's workers and try again") from exc
    return changes


def _chosen(topic: str, tps: list[Any], shards: Sequence[str]) -> list[Any]:
    by_partition = {tp.partition: tp for tp in tps}
    chosen = []
    for shard in shards:
        try:
            partition = partition_of(topic, shard)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
        if partition not in by_partition:
            raise CheckpointError(f"topic {topic!r} has no partition {partition} (shard {shard})")
        chosen.append(by_partition[partition])
    return chosen


async def _offsets(consumer: Any, tps: list[Any], target: Target) -> dict[Any, int]:
    """The offset to commit (the next to read) per partition; a sequence outside the partition is refused."""
    first, end = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
    if target.kind in ("trim_horizon", "start"):
        return dict(first)
    if target.kind == "latest":
        return dict(end)
    if target.kind == "at_timestamp":
        assert target.timestamp is not None
        found = await consumer.offsets_for_times({tp: int(target.timestamp * 1000) for tp in tps})
        return {tp: end[tp] if found.get(tp) is None else found[tp].offset for tp in tps}
    assert target.sequence is not None
    for tp in tps:
        if target.sequence >= end[tp]:
            raise CheckpointError(f"{shard_id_of(tp.topic, tp.partition)} has no offset {target.sequence}: "
                                  f"the partition ends at {end[tp] - 1}")
        if target.sequence < first[tp] - 1:
            raise CheckpointError(f"{shard_id_of(tp.topic, tp.partition)}: offsets before {first[tp]} were "
                                  f"deleted (retention); set {first[tp] - 1} or later, or reset --to trim_horizon")
    return {tp: target.sequence + 1 for tp in tps}
