"""Kafka partitions as streamfn shards: ``"<topic>-<partition>"``."""

from __future__ import annotations


def shard_id_of(topic: str, partition: int) -> str:
    return f"{topic}-{partition}"


def partition_of(topic: str, shard_id: str) -> int:
    """The partition number in ``"<topic>-<partition>"`` (the topic may itself contain dashes)."""
    prefix, sep, number = shard_id.rpartition("-")
    if not sep or prefix != topic or not number.isdigit():
        raise ValueError(f"shard id {shard_id!r} is not a partition of topic {topic!r}")
    return int(number)
