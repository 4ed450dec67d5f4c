"""Checkpoints as the consumer group's committed offsets: Kafka itself is the durable store.

A checkpoint at offset ``n`` is the commit ``{tp: OffsetAndMetadata(n + 1, metadata)}``, made by
``save`` (coalesced, in the background) or ``flush``, never a bare ``commit()`` of the consumer's
position, so an offset moves only past records whose output the sinks acknowledged. The
metadata string carries what a restart needs besides the offset (pending batch bounds, a
tumbling window's state), so a batch whose output may exist is formed again exactly. Brokers
cap metadata (``offset.metadata.max.bytes``, 4096 by default): a larger window state is refused.
Some brokers drop the metadata string altogether: ``bind`` probes for it
(``streamfn.connectors.kafka.metadata_probe``) and refuses to start on such a broker unless the
config accepts the loss (``without_commit_metadata = "accept"``).
A commit refused because the group moved on means another member owns the partition now: it
surfaces as ``LeaseLostError``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import msgspec

from ...errors import CheckpointError, ConfigError, LeaseLostError
from ...protocols.checkpoint import Checkpoint, CheckpointConfig, CheckpointStore, advance, with_pending
from ...records import Position
from .metadata_probe import SETTING, WithoutCommitMetadata, broker_keeps_commit_metadata, decide

if TYPE_CHECKING:
    from ...components import BuildContext
    from ...protocols.source import Source
    from .source import KafkaSource

log = logging.getLogger("streamfn.kafka")

METADATA_VERSION = 1
#: Kafka's default ``offset.metadata.max.bytes``.
MAX_METADATA = 4096


class KafkaCheckpointStoreConfig(CheckpointConfig, kw_only=True, tag="kafka"):
    """Checkpoints as committed offsets of the Kafka source's consumer group (needs a kafka source)."""

    commit_interval: Annotated[float, msgspec.Meta(ge=0, description=(
        "Seconds between coalesced commits; 0 commits as soon as the previous commit returned."))] = 0.0

    without_commit_metadata: Annotated[WithoutCommitMetadata, msgspec.Meta(description=(
        "On a broker that drops offset commit metadata (found at start; Tansu does): `refuse` to start, or "
        "`accept` and run with at-least-once output after a crash (a batch recorded before its sink write "
        "may be formed again differently; a warning is logged, `streamfn_output_at_least_once` is 1 and "
        "`streamfn checkpoints show` says so). "
        "`accept` refuses tumbling windows, whose state is kept in that metadata."))] = "refuse"

    source_type: ClassVar[str | None] = "kafka"

    def window_state_problem(self) -> str | None:
        if self.without_commit_metadata == "accept":
            return ('checkpoints.without_commit_metadata = "accept" runs where offset commit metadata, which holds '
                    'the window state, may be lost: remove it (default "refuse") and use a broker that keeps it')
        return None

    def build(self, ctx: BuildContext) -> Any:
        raise ConfigError("checkpoints of type 'kafka' come with a source of type 'kafka': use the source's "
                          "checkpoint_store()", field="checkpoints.type")

    def store_options(self) -> dict[str, Any]:
        return {"commit_interval": self.commit_interval, "without_commit_metadata": self.without_commit_metadata}


class _Metadata(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False):
    """What rides along with a committed offset (JSON, short keys: the broker caps its size)."""

    v: int = METADATA_VERSION
    pending: list[tuple[int, int, int, int]] = []
    window: str | None = None
    end: bool = False


_encode_metadata = msgspec.json.Encoder().encode
_decode_metadata = msgspec.json.Decoder(_Metadata).decode


def encode_checkpoint(checkpoint: Checkpoint) -> tuple[int, str] | None:
    """``(offset to commit, metadata)`` for a checkpoint, or None when there is nothing to commit.

    The offset is the next record to read. With no position yet but a pending batch, it is that
    batch's first record: nothing before it was read, and the batch is replayed from there.
    """
    if checkpoint.position is not None:
        offset = checkpoint.position.sequence + 1
    elif checkpoint.pending:
        offset = min(first.sequence for first, _ in checkpoint.pending)
    else:
        return None
    meta = _Metadata(
        pending=[(f.sequence, f.sub_sequence, last.sequence, last.sub_sequence) for f, last in checkpoint.pending],
        window=base64.b64encode(checkpoint.window_state).decode("ascii") if checkpoint.window_state else None,
        end=checkpoint.shard_end,
    )
    text = "" if meta == _Metadata() else _encode_metadata(meta).decode("utf-8")
    if len(text) > MAX_METADATA:
        raise CheckpointError(f"checkpoint metadata of {len(text)} bytes exceeds the broker's {MAX_METADATA}: "
                              "a tumbling window state this large cannot be kept with a Kafka offset")
    return offset, text


def decode_checkpoint(offset: int, metadata: str | None) -> Checkpoint:
    """The checkpoint a committed offset stands for; metadata not written by streamfn is ignored."""
    meta = _Metadata()
    if metadata:
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            meta = _decode_metadata(metadata)
    return Checkpoint(
        position=Position(offset - 1),
        shard_end=meta.end,
        pending=tuple((Position(a, b), Position(c, d)) for a, b, c, d in meta.pending),
        window_state=base64.b64decode(meta.window) if meta.window else None,
    )


class KafkaCheckpointStore(CheckpointStore):
    """CheckpointStore over the source's consumer group (see the module docstring)."""

    def __init__(self, source: KafkaSource, *, commit_interval: float = 0.0,
                 without_commit_metadata: WithoutCommitMetadata = "refuse") -> None:
        self._source = source
        self._interval = commit_interval
        self._without_metadata: WithoutCommitMetadata = without_commit_metadata
        #: Whether the broker keeps commit metadata; None until ``bind`` probed it (or the probe failed).
        self.metadata_kept: bool | None = None
        self._probed = False
        self._current: dict[str, Checkpoint] = {}
        self._dirty: set[str] = set()
        self._lock = asyncio.Lock()  # one commit at a time, so a later save never loses to an earlier one
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self.commits = 0

    @property
    def without_metadata(self) -> bool:
        """True when this store runs on a broker that drops commit metadata (accepted by the config;
        also when the probe failed under ``accept``), once ``bind`` probed."""
        return self._probed and self.metadata_kept is not True and self._without_metadata == "accept"

    def at_least_once(self) -> str | None:
        if not self.without_metadata:
            return None
        return ("the broker drops offset commit metadata" if self.metadata_kept is False
                else "the broker could not be probed for offset commit metadata") + f" (accepted by {SETTING})"

    async def open(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop(), name=f"kafka-commits:{self._source.name}")

    async def bind(self, source: Source) -> None:
        """The pipeline is about to run on these checkpoints: probe the broker once for commit
        metadata, refuse or warn. Readers of checkpoints (``status``, ``replay``'s look at the live
        ones) open the store without binding it, so they neither probe nor refuse."""
        if not self._probed:
            await self._probe()

    async def load(self, shard_id: str) -> Checkpoint | None:
        if shard_id in self._current:
            return self._current[shard_id]
        tp = self._source.topic_partition(shard_id)
        committed = await self._fetch_committed(tp)
        if committed is None:
            return None
        checkpoint = decode_checkpoint(*committed)
        self._current[shard_id] = checkpoint
        return checkpoint

    async def save(self, shard_id: str, checkpoint: Checkpoint) -> None:
        self._current[shard_id] = advance(self._current.get(shard_id), checkpoint)
        self._dirty.add(shard_id)
        self._wake.set()

    async def record_pending(self, shard_id: str, first: Position, last: Position) -> None:
        recorded = with_pending(self._current.get(shard_id), first, last)
        if recorded is None:
            return
        self._current[shard_id] = recorded
        self._dirty.add(shard_id)
        await self.flush()  # durable before the sink write it guards

    async def flush(self) -> None:
        async with self._lock:
            await self._commit_dirty()

    def forget(self, shard_ids: list[str]) -> None:
        """Drop cached checkpoints of partitions this worker no longer owns (after their final flush)."""
        for shard_id in shard_ids:
            self._current.pop(shard_id, None)
            self._dirty.discard(shard_id)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        if self._dirty and self._source.opened:
            with contextlib.suppress(CheckpointError):
                await self.flush()

    # ---------------------------------------------------------------------------------------
    async def _probe(self) -> None:
        """Find out once whether the broker keeps commit metadata; refuse or warn (see the module doc)."""
        config = self._source.config
        self._probed = True
        try:
            self.metadata_kept = await broker_keeps_commit_metadata(self._source.consumer_options(), config.topic)
        except CheckpointError as exc:
            if self._without_metadata == "refuse":
                raise
            log.warning("could not probe the broker for offset commit metadata; running as accepted by %s",
                        SETTING, extra={"error": str(exc), "group": config.group_id})
            return
        if decide(self.metadata_kept, self._without_metadata, config.group_id):
            log.warning("the broker drops offset commit metadata: pending batch bounds are not kept, so output "
                        "after a crash is at-least-once (accepted by %s)", SETTING,
                        extra={"group": config.group_id, "topic": config.topic})

    async def _fetch_committed(self, tp: Any) -> tuple[int, str] | None:
        """``(offset, metadata)`` the group committed for ``tp``, or None."""
        # The public ``committed()`` drops the metadata string; the group coordinator's call keeps
        # it. aiokafka keeps that coordinator private: tests/unit/test_kafka_private_api.py pins it.
        coordinator = self._source.consumer._coordinator
        found = (await coordinator.fetch_committed_offsets([tp])).get(tp)
        if found is None or found.offset < 0:
            return None
        return int(found.offset), found.metadata or ""

    async def _commit_dirty(self) -> None:
        if not self._dirty:
            return
        from aiokafka.structs import OffsetAndMetadata

        dirty, self._dirty = self._dirty, set()
        assigned = self._source.assigned()
        offsets: dict[Any, Any] = {}
        revoked: list[str] = []
        for shard_id in dirty:
            tp = self._source.topic_partition(shard_id)
            if tp not in assigned:  # revoked before this save got out: the new owner resumes from its commit
                revoked.append(shard_id)
                continue
            encoded = encode_checkpoint(self._current[shard_id])
            if encoded is not None:
                offsets[tp] = OffsetAndMetadata(*encoded)
        self.forget(revoked)
        if offsets:
            await self._commit(offsets, dirty - set(revoked))
        if revoked:
            raise LeaseLostError(f"partitions no longer assigned to this worker: {sorted(revoked)}")

    async def _commit(self, offsets: dict[Any, Any], shard_ids: set[str]) -> None:
        from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

        try:
            await self._source.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            self.forget(list(shard_ids))
            raise LeaseLostError(f"commit refused, the group has moved on: {exc}") from exc
        except KafkaError as exc:
            self._dirty |= shard_ids
            raise CheckpointError(f"commit failed: {exc!r}") from exc
        self.commits += 1

    async def _flush_loop(self) -> None:
        delay = 0.1
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self._interval)  # 0: let every shard done in this loop turn join
            try:
                await self.flush()
                delay = 0.1
            except LeaseLostError as exc:
                log.warning("offsets not committed: partitions were revoked", extra={"error": str(exc)})
            except CheckpointError as exc:
                log.warning("offset commit failed; retrying in %.1fs", delay, extra={"error": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                self._wake.set()
