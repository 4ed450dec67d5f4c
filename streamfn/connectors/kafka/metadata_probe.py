"""Does the broker keep the metadata string of an offset commit? Kafka does; some Kafka-protocol
brokers (Tansu) answer every fetch with empty metadata.

The Kafka checkpoint store keeps in that string what exact output after a crash needs besides the
offset: the bounds of a batch recorded before its sink write (so a restart forms it again and
overwrites its output) and a tumbling window's state. Lost silently, a restart forms other batches
and writes other output keys, and a window starts over. So the store asks once, at start, and
refuses to start on such a broker unless ``without_commit_metadata = "accept"``. Only a pipeline
about to run asks (the store's ``bind``): ``status`` and other readers of checkpoints do not.

The probe commits in a group of its own, ``<group_id>.streamfn-metadata-probe``, never in the
pipeline's group: a commit there would need this worker's generation (it may not have joined
yet, and it must not rejoin for this), would rewrite the metadata of a real checkpoint of a
partition another member may own, and cannot be made for a partition with no committed offset
without moving that partition's start. The probe group has no members and holds one offset of
partition 0 that nothing reads; its name shares the pipeline group's prefix, so a prefixed ACL
on the group covers it.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Literal

from ...errors import CheckpointError

log = logging.getLogger("streamfn.kafka")

PROBE_GROUP_SUFFIX = ".streamfn-metadata-probe"
SETTING = "[checkpoints] without_commit_metadata"

WithoutCommitMetadata = Literal["refuse", "accept"]


class CommitMetadataLost(CheckpointError):
    """The broker drops offset commit metadata and the pipeline did not accept what that loses."""


LOST = ("this Kafka broker drops the metadata of offset commits (Tansu does; Apache Kafka keeps it), where "
        "streamfn keeps the bounds of a batch recorded before its sink write: after a crash, that batch may be "
        "formed differently and its output written under other keys (duplicates instead of overwrites)")


def probe_group(group_id: str) -> str:
    """The group the probe commits in (never the pipeline's own group)."""
    return group_id + PROBE_GROUP_SUFFIX


def kept(sent: str, found: Any) -> bool:
    """Whether the coordinator's answer (an ``OffsetAndMetadata`` or None) carries back ``sent``."""
    return found is not None and found.offset >= 0 and found.metadata == sent


def decide(metadata_kept: bool, policy: WithoutCommitMetadata, group_id: str) -> bool:
    """Raise ``CommitMetadataLost`` when the broker drops metadata and ``policy`` refuses; else
    return whether the pipeline runs without commit metadata (True: warn and expose it)."""
    if metadata_kept:
        return False
    if policy == "refuse":
        raise CommitMetadataLost(
            f"consumer group {group_id!r}: {LOST}. Use a broker that keeps commit metadata, or set "
            f'{SETTING} = "accept" to run with at-least-once output after a crash (tumbling windows are then refused)')
    return True


async def broker_keeps_commit_metadata(consumer_options: dict[str, Any], topic: str) -> bool:
    """Commit a unique metadata string for partition 0 of ``topic`` in the probe group and read it back.

    ``consumer_options`` are the source's (``KafkaSourceConfig.consumer_options``): the probe
    reaches the same brokers with the same credentials. Raises ``CheckpointError`` when the commit
    or the fetch is refused.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError
    from aiokafka.structs import OffsetAndMetadata

    group = probe_group(consumer_options["group_id"])
    tp = TopicPartition(topic, 0)
    sent = f"streamfn-probe:{uuid.uuid4().hex}"
    consumer = AIOKafkaConsumer(**{**consumer_options, "group_id": group})
    try:
        await consumer.start()
        consumer.assign([tp])  # a commit without a generation: the probe group never has members
        await consumer.commit({tp: OffsetAndMetadata(0, sent)})
        # ``committed()`` drops the metadata; the coordinator's fetch keeps it (pinned by
        # tests/unit/test_kafka_private_api.py).
        found = (await consumer._coordinator.fetch_committed_offsets([tp])).get(tp)
    except KafkaError as exc:
        raise CheckpointError(f"could not check whether the broker keeps offset commit metadata: committing in "
                              f"group {group!r} failed ({exc!r}); allow this worker to commit in that group") from exc
    finally:
        await consumer.stop()
    return kept(sent, found)
