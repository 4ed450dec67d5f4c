"""The DynamoDB checkpoint store: checkpoints kept in a lease table, so several workers share a stream.

A worker may only write the checkpoint of a shard whose lease it holds; every write is
conditional on the lease counter and owner it last saw, so a worker that lost a lease (a
zombie back from a pause) can never move a checkpoint. Leases are renewed in the background
every ``renew_interval``; a failed renewal loses the lease at once and the assigner stops that
shard's work without checkpointing. Who takes which lease is ``assigner.py``'s job.

Defaults follow the Kinesis Client Library: failover 10 s, renew every failover/3, take
(scan) every 2 x failover, steal at most one lease per take.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Protocol

import msgspec

from ...aws import AWS_DEFAULTS, AwsSettings
from ...errors import CheckpointError, LeaseLostError
from ...protocols.checkpoint import Checkpoint, CheckpointConfig, CheckpointStore, advance, with_pending
from ...protocols.source import ShardInfo, StartingPosition
from ...records import Position
from .table import Lease, LeaseTable, retrying

if TYPE_CHECKING:
    from ...components import BuildContext
    from ...protocols.source import Source
    from .assigner import LeaseAssigner

log = logging.getLogger("streamfn.leases")


class DynamoDBCheckpointStoreConfig(CheckpointConfig, kw_only=True, tag="dynamodb"):
    """Checkpoints and leases in a DynamoDB table shared by every worker of the pipeline."""

    table: Annotated[str, msgspec.Meta(description=(
        "The lease table. One table may hold several pipelines (keys are prefixed by `key_prefix`)."
    ))] = "streamfn-leases"
    create_table: Annotated[bool, msgspec.Meta(description=(
        "Create the table (pay per request) on first use when it does not exist."))] = True
    key_prefix: Annotated[str | None, msgspec.Meta(description=(
        'Prefix of every lease key; default `<pipeline>:`. Set `""` to read a table written by the Kinesis Client '
        "Library (single-stream mode: the lease key is the shard id)."))] = None
    worker_id: Annotated[str | None, msgspec.Meta(description=(
        "This worker's name in `leaseOwner`; default `<host>:<pid>:<random>`."))] = None
    failover_time: Annotated[float, msgspec.Meta(description=(
        "A lease whose counter did not move for this long (seen locally) is free to take."))] = 10.0
    renew_interval: Annotated[float | None, msgspec.Meta(description=(
        "Seconds between renewals of held leases; default failover_time / 3."))] = None
    take_interval: Annotated[float | None, msgspec.Meta(description=(
        "Seconds between scans of the table to take free leases; default 2 x failover_time."))] = None
    steal_interval: Annotated[float | None, msgspec.Meta(description=(
        "Minimum seconds between two steals from busier workers; default take_interval."))] = None
    max_leases_to_steal: Annotated[int, msgspec.Meta(description=(
        "Leases stolen at most per steal (KCL's maxLeasesToStealAtOneTime); 0 never steals."))] = 1
    max_leases_per_worker: Annotated[int | None, msgspec.Meta(description=(
        "Cap of leases one worker holds (None: no cap)."))] = None
    shard_sync_interval: Annotated[float, msgspec.Meta(description=(
        "Seconds between listings of the stream's shards to create leases for new shards."))] = 60.0
    checkpoint_interval: Annotated[float, msgspec.Meta(description=(
        "Minimum seconds between two checkpoint writes of one shard (0: after every batch)."))] = 0.0
    request_timeout: Annotated[float | None, msgspec.Meta(description=(
        "Seconds one request to the table may take in all (connect, send, answer) before it is retried; default "
        "`[aws]`'s if below failover_time / 2, else failover_time / 2. It must stay below failover_time, or a "
        "slow renewal loses the lease."))] = None
    endpoint_url: Annotated[str | None, msgspec.Meta(description=(
        "DynamoDB endpoint (default: `[aws]`'s, else AWS_ENDPOINT_URL_DYNAMODB / AWS_ENDPOINT_URL, then AWS)."))] = None
    region: Annotated[str | None, msgspec.Meta(description=(
        "AWS region; default `[aws]`'s, else `AWS_REGION` / `AWS_DEFAULT_REGION` / the profile's region."))] = None

    def __post_init__(self) -> None:
        if self.request_timeout is not None and not 0 < self.request_timeout < self.failover_time:
            raise ValueError("request_timeout must be positive and below failover_time")

    def settings(self, pipeline: str, aws: AwsSettings = AWS_DEFAULTS) -> LeaseSettings:
        """Every default filled in; ``aws`` is the pipeline's ``[aws]`` section."""
        failover = self.failover_time
        shared = aws.under(region=self.region, endpoint_url=self.endpoint_url)
        take = self.take_interval if self.take_interval is not None else 2 * failover
        return LeaseSettings(
            table=self.table, create_table=self.create_table,
            prefix=self.key_prefix if self.key_prefix is not None else f"{pipeline}:",
            worker_id=self.worker_id or default_worker_id(),
            failover_time=failover,
            renew_interval=self.renew_interval if self.renew_interval is not None else failover / 3,
            take_interval=take,
            steal_interval=self.steal_interval if self.steal_interval is not None else take,
            max_leases_to_steal=self.max_leases_to_steal,
            max_leases_per_worker=self.max_leases_per_worker,
            shard_sync_interval=self.shard_sync_interval,
            checkpoint_interval=self.checkpoint_interval,
            request_timeout=self.request_timeout if self.request_timeout is not None
            else min(aws.request_timeout, failover / 2) if aws.request_timeout is not None else None,
            endpoint_url=shared.endpoint_url, region=shared.region, profile=shared.profile,
        )

    def build(self, ctx: BuildContext) -> DynamoDBCheckpointStore:
        return DynamoDBCheckpointStore(self.settings(ctx.pipeline, ctx.aws))


class LeaseSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The resolved lease settings (every default filled in)."""

    table: str
    prefix: str
    worker_id: str
    create_table: bool = True
    failover_time: float = 10.0
    renew_interval: float = 10.0 / 3
    take_interval: float = 20.0
    steal_interval: float = 20.0
    max_leases_to_steal: int = 1
    max_leases_per_worker: int | None = None
    shard_sync_interval: float = 60.0
    checkpoint_interval: float = 0.0
    #: None: failover_time / 2 (at least 1 s).
    request_timeout: float | None = None
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(eq=False)
class HeldLease:
    """A lease this worker holds: its fencing counter and the checkpoint it has to write."""

    shard_id: str
    counter: int
    parent_ids: tuple[str, ...]
    checkpoint: Checkpoint
    starting: StartingPosition | None
    #: Monotonic time the last successful fenced write was sent (renewals are writes too).
    confirmed_at: float
    dirty: bool = False
    lost: bool = False
    #: Ids of fenced writes sent since the last confirmed one that got no answer (a timeout, a cut
    #: connection): any of them may have been applied and moved the counter unseen.
    unsure: set[str] = field(default_factory=set)
    written_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Set by a flush: the writer stops waiting for ``checkpoint_interval`` and writes now.
    hurry: asyncio.Event = field(default_factory=asyncio.Event)
    writer: asyncio.Task[None] | None = None

    @property
    def shard(self) -> ShardInfo:
        return ShardInfo(self.shard_id, self.parent_ids)


class DynamoDBCheckpointStore(CheckpointStore):
    """CheckpointStore on the lease table, and the lease holder the LeaseAssigner drives.

    Checkpoints of held shards are cached in memory (``save`` returns at once and a per-shard
    writer sends the latest one); checkpoints of other shards are read from the table.
    """

    def __init__(self, settings: LeaseSettings, table: LeaseTable | None = None) -> None:
        self.settings = settings
        self.worker_id = settings.worker_id
        self.table = table or LeaseTable(settings.table, prefix=settings.prefix,
                                         endpoint_url=settings.endpoint_url, region=settings.region,
                                         profile=settings.profile,
                                         request_timeout=settings.request_timeout
                                         or max(1.0, settings.failover_time / 2))
        self.held: dict[str, HeldLease] = {}
        #: Shards whose lease was lost; the assigner stops their work without a checkpoint.
        self.lost: asyncio.Queue[str] = asyncio.Queue()
        self._renewer: asyncio.Task[None] | None = None
        self._renewing = asyncio.Lock()
        self._opened = False
        self._write_ids = itertools.count()
        #: Unique to this store object, so that no other process's write ids (even under the same
        #: configured worker_id) can be taken for this one's.
        self._write_prefix = f"{self.worker_id}/{uuid.uuid4().hex[:8]}/"

    # -- lifecycle ---------------------------------------------------------------------
    async def open(self) -> None:
        if self._opened:
            return
        await self.table.open()
        await retrying("lease table check", lambda: self.table.ensure_table(create=self.settings.create_table))
        self._renewer = asyncio.create_task(self._renew_loop(), name=f"lease-renewer:{self.worker_id}")
        self._opened = True

    async def close(self) -> None:
        """Stop renewing and close the client. Leases still held are left to expire: call
        ``release_all`` first for a graceful stop."""
        await self._stop_renewer()
        writers = [h.writer for h in self.held.values() if h.writer is not None]
        for writer in writers:
            writer.cancel()
        await asyncio.gather(*writers, return_exceptions=True)
        self.held.clear()
        await self.table.close()
        self._opened = False

    def assigner(self, source: Source) -> LeaseAssigner:
        """The Assigner that takes leases of this table and runs their shards; ``source`` lists
        the stream's shards so new ones get leases."""
        from .assigner import LeaseAssigner

        return LeaseAssigner(self, source)

    async def lease_owners(self) -> dict[str, str] | None:
        return {lease.shard_id: lease.owner for lease in await self.table.scan() if lease.owner}

    # -- CheckpointStore -----------------------------------------------------------------
    async def load(self, shard_id: str) -> Checkpoint | None:
        held = self.held.get(shard_id)
        if held is not None:
            return _or_none(held.checkpoint)
        lease = await retrying("checkpoint read", lambda: self.table.get(shard_id))
        return _or_none(lease.checkpoint) if lease is not None else None

    def starting_position(self, shard_id: str) -> StartingPosition | None:
        """Where a held shard without a checkpoint starts, if not at the pipeline's position
        (after ``checkpoints reset``, and trim horizon for children)."""
        held = self.held.get(shard_id)
        return held.starting if held is not None else None

    async def save(self, shard_id: str, checkpoint: Checkpoint) -> None:
        held = self._holding(shard_id)
        held.checkpoint = advance(held.checkpoint, checkpoint)
        held.dirty = True
        self._start_writer(held)

    async def record_pending(self, shard_id: str, first: Position, last: Position) -> None:
        held = self._holding(shard_id)
        recorded = with_pending(held.checkpoint, first, last)
        if recorded is not None:
            held.checkpoint = recorded
            held.dirty = True
        await self._flush_one(held)

    async def flush(self) -> None:
        leases = [h for h in self.held.values() if h.dirty or h.writer is not None]
        results = await asyncio.gather(*(self._flush_one(h) for h in leases), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        for error in errors:
            if isinstance(error, LeaseLostError):
                raise error
        if errors:
            raise errors[0]

    def _holding(self, shard_id: str) -> HeldLease:
        held = self.held.get(shard_id)
        if held is None or held.lost:
            raise LeaseLostError(f"shard {shard_id}: this worker does not hold its lease")
        return held

    # -- checkpoint writing ------------------------------------------------------------
    def _start_writer(self, held: HeldLease) -> None:
        if held.writer is None or held.writer.done():
            held.writer = self._new_writer(held)

    def _new_writer(self, held: HeldLease) -> asyncio.Task[None]:
        """A task writing the lease's checkpoint. Its failure is always looked at, also when the
        flush awaiting it was cancelled mid-write (a lost lease stops the shard exactly then)."""
        writer = asyncio.create_task(self._write_dirty(held), name=f"checkpoint:{held.shard_id}")
        writer.add_done_callback(_note_failure)
        return writer

    async def _write_dirty(self, held: HeldLease) -> None:
        """Write the lease's latest checkpoint until nothing newer is waiting; between two writes
        wait for ``checkpoint_interval`` unless a flush hurries it."""
        while held.dirty and not held.lost:
            wait = held.written_at + self.settings.checkpoint_interval - time.monotonic()
            if wait > 0 and not held.hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await held.hurry.wait()
            held.hurry.clear()
            held.dirty = False
            try:
                await self._fenced(held, lambda counter, write_id: self.table.write_checkpoint(
                    held.shard_id, self.worker_id, counter, write_id, held.checkpoint))
            except BaseException:
                if not held.lost:
                    held.dirty = True
                raise
            held.written_at = time.monotonic()

    async def _flush_one(self, held: HeldLease) -> None:
        """Return once the lease's checkpoint as of now is durable (raise why not)."""
        while True:
            held.hurry.set()
            writer = held.writer
            if writer is not None and not writer.done():
                with contextlib.suppress(Exception):
                    await asyncio.shield(writer)
            if held.lost:
                raise LeaseLostError(f"shard {held.shard_id}: lease lost before its checkpoint was written")
            if not held.dirty:
                return
            held.hurry.set()
            held.writer = self._new_writer(held)
            await asyncio.shield(held.writer)

    async def _fenced(self, held: HeldLease, write: _FencedWrite) -> None:
        """Run one counter-conditional write under the lease's lock; a failed condition loses the
        lease, unless it failed because a write of ours that got no answer had been applied."""
        async with held.lock:
            if held.lost:
                raise LeaseLostError(f"shard {held.shard_id}: lease lost")
            while True:
                write_id = f"{self._write_prefix}{next(self._write_ids)}"
                sent_at = time.monotonic()
                try:
                    await write(held.counter, write_id)
                except LeaseLostError:
                    if held.unsure and await self._unsure_write_applied(held):
                        continue  # once at most: the lease's counter is known again, nothing unsure
                    self._lose(held, "a conditional write failed: another worker holds the lease")
                    raise
                except BaseException:
                    held.unsure.add(write_id)
                    raise
                held.counter += 1
                held.confirmed_at = sent_at
                held.unsure.clear()
                return

    async def _unsure_write_applied(self, held: HeldLease) -> bool:
        """Whether the lease moved only by one of our own writes that got no answer (as the Kinesis
        Client Library checks after a failed renewal): still ours, one step on, and that write's id
        stored. Then the lease is held at its new counter. A failed read raises (retry later)."""
        lease = await self.table.get(held.shard_id)
        if (lease is None or lease.owner != self.worker_id or lease.counter != held.counter + 1
                or lease.last_write not in held.unsure):
            return False
        held.counter += 1
        held.unsure.clear()
        log.info("a lease write that got no answer had been applied; the lease is kept",
                 extra={"shard": held.shard_id, "worker": self.worker_id, "counter": held.counter})
        return True

    # -- leases --------------------------------------------------------------------------
    async def take(self, lease: Lease) -> HeldLease | None:
        """Take ``lease`` as last seen; None if another worker moved it first."""
        taken = await self.table.take(lease, self.worker_id)
        if taken is None:
            return None
        held = HeldLease(
            shard_id=taken.shard_id, counter=taken.counter, parent_ids=taken.parent_ids,
            checkpoint=taken.checkpoint, starting=taken.starting_position, confirmed_at=time.monotonic(),
        )
        self.held[taken.shard_id] = held
        log.info("lease taken", extra={"shard": taken.shard_id, "worker": self.worker_id,
                                       "previous_owner": lease.owner, "counter": taken.counter})
        return held

    async def acquire(self, shard_id: str, parent_ids: tuple[str, ...] = ()) -> bool:
        """Create ``shard_id``'s lease if missing and take it if nobody holds it (for tools and
        tests that drive the store without an assigner). False if another worker holds it."""
        if shard_id in self.held:
            return True
        await self.table.create(shard_id, parent_ids)
        lease = await self.table.get(shard_id)
        if lease is None or lease.owner not in (None, self.worker_id):
            return False
        return await self.take(lease) is not None

    async def release(self, shard_id: str) -> None:
        """Write the shard's last checkpoint and give its lease up so another worker takes it now."""
        held = self.held.get(shard_id)
        if held is None:
            return
        try:
            await self._flush_one(held)
            await self._fenced(held, lambda counter, write_id: self.table.release(
                shard_id, self.worker_id, counter, write_id))
        except LeaseLostError:
            return
        finally:
            if self.held.get(shard_id) is held:
                del self.held[shard_id]
        log.info("lease released", extra={"shard": shard_id, "worker": self.worker_id})

    async def release_all(self) -> None:
        """Graceful stop: release every held lease (after the shards stopped and checkpointed)."""
        await self._stop_renewer()
        results = await asyncio.gather(*(self.release(s) for s in list(self.held)), return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.warning("lease release failed; it will expire instead", extra={"error": repr(result)})

    def forfeit(self, held: HeldLease, reason: str) -> None:
        """Treat ``held`` as lost (another worker was seen holding it): its shard stops, unwritten."""
        self._lose(held, reason)

    def _lose(self, held: HeldLease, reason: str) -> None:
        if held.lost:
            return
        held.lost = True
        held.dirty = False
        if self.held.get(held.shard_id) is held:
            del self.held[held.shard_id]
        log.warning("lease lost: %s", reason, extra={"shard": held.shard_id, "worker": self.worker_id})
        self.lost.put_nowait(held.shard_id)

    async def renew_all(self) -> None:
        """Renew every held lease once; a lease not confirmed for failover_time is dropped."""
        await asyncio.gather(*(self._renew(h) for h in list(self.held.values())))

    async def _renew(self, held: HeldLease) -> None:
        try:
            await self._fenced(held, lambda counter, write_id: self.table.renew(
                held.shard_id, self.worker_id, counter, write_id))
        except LeaseLostError:
            return
        except Exception as exc:
            unconfirmed = time.monotonic() - held.confirmed_at
            if unconfirmed > self.settings.failover_time:
                self._lose(held, f"not renewed for {unconfirmed:.1f}s ({exc!r})")
            else:
                log.warning("lease renewal failed; will retry", extra={"shard": held.shard_id, "error": repr(exc)})
            return
        if held.dirty and (held.writer is None or held.writer.done()):
            self._start_writer(held)  # a checkpoint write that failed transiently is retried here

    async def _renew_loop(self) -> None:
        while True:
            started = time.monotonic()
            async with self._renewing:
                try:
                    await self.renew_all()
                except Exception:
                    log.exception("lease renewal round failed")
            await asyncio.sleep(max(0.0, self.settings.renew_interval - (time.monotonic() - started)))

    async def _stop_renewer(self) -> None:
        """Stop renewing between two rounds: a renewal cut off in flight may have bumped the
        counter unseen, and the release after it would then find the lease "lost"."""
        if self._renewer is None:
            return
        async with self._renewing:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
        self._renewer = None


class _FencedWrite(Protocol):
    def __call__(self, counter: int, write_id: str, /) -> Awaitable[None]: ...


def _note_failure(task: asyncio.Task[None]) -> None:
    """A background checkpoint write failed: the renewer retries it, flush reports it."""
    if not task.cancelled() and (error := task.exception()) is not None and not isinstance(error, LeaseLostError):
        log.warning("checkpoint write failed; will retry", extra={"error": repr(error)})


def _or_none(checkpoint: Checkpoint) -> Checkpoint | None:
    empty = Checkpoint()
    return None if checkpoint == empty else checkpoint


__all__ = ["CheckpointError", "DynamoDBCheckpointStore", "DynamoDBCheckpointStoreConfig", "HeldLease",
           "LeaseSettings"]
