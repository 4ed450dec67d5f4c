"""The DynamoDB lease table: one item per shard, every write fenced by the lease counter.

Column names are the Kinesis Client Library's (``leaseKey``, ``leaseOwner``, ``leaseCounter``,
``checkpoint``, ``checkpointSubSequenceNumber``, ``parentShardId``,
``ownerSwitchesSinceCheckpoint``), so a KCL table can be read as it is. What only streamfn
needs lives in ``streamfn*`` columns, which KCL does not use. This module only talks to DynamoDB;
who takes which lease is decided in ``streamfn.connectors.lease_table.assigner``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec

from ...aws import AwsClient, error_code
from ...errors import CheckpointError, LeaseLostError, RetryableError
from ...protocols.checkpoint import Checkpoint
from ...protocols.source import StartingPosition
from ...records import Position

log = logging.getLogger("streamfn.leases")

T = TypeVar("T")

SHARD_END = "SHARD_END"
#: Checkpoint values that are not sequence numbers. All but SHARD_END mean "no checkpoint yet".
SENTINELS = frozenset({"TRIM_HORIZON", "LATEST", "AT_TIMESTAMP", SHARD_END})



def _encode_pending(pending: tuple[tuple[Position, Position], ...]) -> str:
    """``first-last`` bounds joined by spaces, each ``sequence.sub``: Kinesis sequences overflow
    msgpack's 64-bit ints, so they stay decimal text as in KCL's own columns."""
    return " ".join(f"{a.sequence}.{a.sub_sequence}-{b.sequence}.{b.sub_sequence}" for a, b in pending)


def _decode_position(text: str) -> Position:
    sequence, _, sub = text.partition(".")
    return Position(int(sequence), int(sub or 0))


def _decode_pending(text: str) -> tuple[tuple[Position, Position], ...]:
    bounds = (part.split("-") for part in text.split())
    return tuple((_decode_position(a), _decode_position(b)) for a, b in bounds)



class Lease(msgspec.Struct, frozen=True, kw_only=True):
    """One lease item as read from the table."""

    key: str
    shard_id: str
    owner: str | None
    counter: int
    checkpoint: Checkpoint
    parent_ids: tuple[str, ...] = ()
    owner_switches: int = 0
    #: The raw checkpoint column when it is a sentinel (TRIM_HORIZON, LATEST, ...), else None.
    sentinel: str | None = None
    #: Where to start without a checkpoint, as set by ``streamfn checkpoints reset``.
    reset_to: StartingPosition | None = None
    #: The id of the last fenced write a streamfn worker applied (``streamfnWrite``): a worker whose
    #: write got no answer tells by it whether that write was applied.
    last_write: str | None = None

    @property
    def finished(self) -> bool:
        return self.checkpoint.shard_end

    @property
    def starting_position(self) -> StartingPosition | None:
        """Where a shard without a checkpoint starts, when not at the pipeline's starting position.

        An operator's reset wins; a child shard starts at its trim horizon so nothing between
        its parents' ends and its first read is skipped. A KCL sentinel alone does not count:
        the pipeline's own ``starting_position`` applies to such a lease.
        """
        if self.checkpoint.position is not None or self.checkpoint.shard_end:
            return None
        if self.reset_to is not None:
            return self.reset_to
        if self.parent_ids:
            return StartingPosition("trim_horizon")
        return None


def lease_from_item(item: dict[str, Any], prefix: str) -> Lease | None:
    """Parse a DynamoDB item (low-level attribute-value form); None if it is not a lease."""
    key = item.get("leaseKey", {}).get("S")
    if key is None or "leaseCounter" not in item or not key.startswith(prefix):
        return None
    raw = item.get("checkpoint", {}).get("S")
    sub = int(item.get("checkpointSubSequenceNumber", {}).get("N", "0"))
    sentinel = raw if raw in SENTINELS or raw is None else None
    position = None if sentinel is not None or raw is None else Position(int(raw), sub)
    pending_raw = item.get("streamfnPending", {}).get("S")
    checkpoint = Checkpoint(
        position=position,
        shard_end=raw == SHARD_END,
        pending=_decode_pending(pending_raw) if pending_raw else (),
        window_state=item.get("streamfnWindowState", {}).get("B"),
    )
    reset_kind = item.get("streamfnStart", {}).get("S")
    reset_at = item.get("streamfnStartTimestamp", {}).get("N")
    reset_to = None
    if reset_kind in ("trim_horizon", "latest", "at_timestamp"):
        reset_to = StartingPosition(reset_kind, float(reset_at) if reset_at is not None else None)
    return Lease(
        key=key,
        shard_id=key[len(prefix):],
        owner=item.get("leaseOwner", {}).get("S"),
        counter=int(item["leaseCounter"]["N"]),
        checkpoint=checkpoint,
        parent_ids=tuple(sorted(item.get("parentShardId", {}).get("SS", ()))),
        owner_switches=int(item.get("ownerSwitchesSinceCheckpoint", {}).get("N", "0")),
        sentinel=sentinel,
        reset_to=reset_to,
        last_write=item.get("streamfnWrite", {}).get("S"),
    )


def checkpoint_update(checkpoint: Checkpoint) -> tuple[list[str], list[str], dict[str, Any]]:
    """(SET clauses, REMOVE attributes, values) writing ``checkpoint`` in KCL's columns."""
    sets = ["ownerSwitchesSinceCheckpoint = :zero"]
    removes: list[str] = []
    values: dict[str, Any] = {":zero": {"N": "0"}}
    if checkpoint.shard_end or checkpoint.position is not None:
        removes += ["streamfnStart", "streamfnStartTimestamp"]  # a reset is used up by real progress
    if checkpoint.shard_end:
        sets += ["checkpoint = :cp", "checkpointSubSequenceNumber = :zero"]
        values[":cp"] = {"S": SHARD_END}
    elif checkpoint.position is not None:
        sets += ["checkpoint = :cp", "checkpointSubSequenceNumber = :sub"]
        values[":cp"] = {"S": str(checkpoint.position.sequence)}
        values[":sub"] = {"N": str(checkpoint.position.sub_sequence)}
    if checkpoint.pending:
        sets.append("streamfnPending = :pending")
        values[":pending"] = {"S": _encode_pending(checkpoint.pending)}
    else:
        removes.append("streamfnPending")
    if checkpoint.window_state is not None:
        sets.append("streamfnWindowState = :window")
        values[":window"] = {"B": checkpoint.window_state}
    else:
        removes.append("streamfnWindowState")
    return sets, removes, values


def update_expression(sets: list[str], removes: list[str]) -> str:
    expression = "SET " + ", ".join(sets)
    if removes:
        expression += " REMOVE " + ", ".join(removes)
    return expression


def is_condition_failure(exc: BaseException) -> bool:
    """A conditional write was refused (raw botocore error or the CheckpointError raised from it)."""
    return error_code(exc.__cause__ or exc) == "ConditionalCheckFailedException"


class LeaseTable:
    """The lease operations, each one conditional request (no retries inside, callers decide)."""

    def __init__(self, table: str, *, prefix: str, endpoint_url: str | None = None, region: str | None = None,
                 profile: str | None = None, request_timeout: float = 10.0) -> None:
        self.table = table
        self.prefix = prefix
        self.aws = AwsClient("dynamodb", endpoint_url=endpoint_url, region=region, profile=profile,
                             timeout=request_timeout)

    async def open(self) -> None:
        await self.aws.open()

    async def close(self) -> None:
        await self.aws.close()

    async def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """One request bounded by the request timeout: RetryableError (with its kind) for throttling,
        timeouts, connection failures and 5xx; CheckpointError otherwise, including a failed
        condition, which ``is_condition_failure`` recognises by its code."""
        return await self.aws.call(operation, CheckpointError, **kwargs)

    # -- table -------------------------------------------------------------------------
    async def ensure_table(self, *, create: bool) -> None:
        """Use the table, creating it (pay per request) when allowed and missing."""
        try:
            described = await self.call("describe_table", TableName=self.table)
        except CheckpointError as exc:
            if error_code(exc.__cause__ or exc) != "ResourceNotFoundException":
                raise
            if not create:
                raise CheckpointError(f"lease table {self.table!r} does not exist and create_table is off") from exc
            with contextlib.suppress(CheckpointError):  # another worker may create it at the same time
                await self.call(
                    "create_table", TableName=self.table, BillingMode="PAY_PER_REQUEST",
                    AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
                    KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
                )
            described = await self.call("describe_table", TableName=self.table)
        while described["Table"].get("TableStatus") not in ("ACTIVE", "UPDATING"):
            await asyncio.sleep(1.0)
            described = await self.call("describe_table", TableName=self.table)

    # -- reads -------------------------------------------------------------------------
    async def scan(self) -> list[Lease]:
        """Every lease of this prefix, read consistently."""
        leases: list[Lease] = []
        kwargs: dict[str, Any] = {"TableName": self.table, "ConsistentRead": True}
        if self.prefix:
            kwargs["FilterExpression"] = "begins_with(leaseKey, :prefix)"
            kwargs["ExpressionAttributeValues"] = {":prefix": {"S": self.prefix}}
        while True:
            page = await self.call("scan", **kwargs)
            for item in page.get("Items", ()):
                lease = lease_from_item(item, self.prefix)
                if lease is not None:
                    leases.append(lease)
            last = page.get("LastEvaluatedKey")
            if not last:
                return leases
            kwargs["ExclusiveStartKey"] = last

    async def get(self, shard_id: str) -> Lease | None:
        page = await self.call("get_item", TableName=self.table, Key=self._key(shard_id), ConsistentRead=True)
        item = page.get("Item")
        return lease_from_item(item, self.prefix) if item else None

    def _key(self, shard_id: str) -> dict[str, Any]:
        return {"leaseKey": {"S": self.prefix + shard_id}}

    # -- writes ------------------------------------------------------------------------
    async def create(self, shard_id: str, parent_ids: tuple[str, ...]) -> bool:
        """Create a fresh unowned lease; False if it exists already."""
        item: dict[str, Any] = {
            "leaseKey": {"S": self.prefix + shard_id},
            "leaseCounter": {"N": "0"},
            "checkpoint": {"S": "TRIM_HORIZON"},
            "checkpointSubSequenceNumber": {"N": "0"},
            "ownerSwitchesSinceCheckpoint": {"N": "0"},
        }
        if parent_ids:
            item["parentShardId"] = {"SS": sorted(parent_ids)}
        try:
            await self.call("put_item", TableName=self.table, Item=item,
                            ConditionExpression="attribute_not_exists(leaseKey)")
        except Exception as exc:
            if is_condition_failure(exc):
                return False
            raise
        return True

    async def delete_finished(self, lease: Lease) -> bool:
        """Delete an unowned SHARD_END lease as last seen; False if it changed meanwhile."""
        try:
            await self.call(
                "delete_item", TableName=self.table, Key=self._key(lease.shard_id),
                ConditionExpression=("leaseCounter = :counter AND checkpoint = :end"
                                     " AND attribute_not_exists(leaseOwner)"),
                ExpressionAttributeValues={":counter": {"N": str(lease.counter)}, ":end": {"S": SHARD_END}},
            )
        except Exception as exc:
            if is_condition_failure(exc):
                return False
            raise
        return True

    async def take(self, lease: Lease, owner: str) -> Lease | None:
        """Take ``lease`` as last seen (same counter, same owner); None if someone moved first."""
        values: dict[str, Any] = {":counter": {"N": str(lease.counter)}, ":one": {"N": "1"},
                                  ":me": {"S": owner}}
        if lease.owner is None:
            condition = "leaseCounter = :counter AND attribute_not_exists(leaseOwner)"
        else:
            condition = "leaseCounter = :counter AND leaseOwner = :seen"
            values[":seen"] = {"S": lease.owner}
        switches = ", ownerSwitchesSinceCheckpoint = if_not_exists(ownerSwitchesSinceCheckpoint, :zero) + :one" \
            if lease.owner != owner else ""
        if switches:
            values[":zero"] = {"N": "0"}
        try:
            result = await self.call(
                "update_item", TableName=self.table, Key=self._key(lease.shard_id),
                UpdateExpression=f"SET leaseOwner = :me, leaseCounter = leaseCounter + :one{switches}",
                ConditionExpression=condition, ExpressionAttributeValues=values, ReturnValues="ALL_NEW",
            )
        except Exception as exc:
            if is_condition_failure(exc):
                return None
            raise
        return lease_from_item(result["Attributes"], self.prefix)

    async def fenced_update(self, shard_id: str, owner: str, counter: int, write_id: str, sets: list[str],
                            removes: Sequence[str] = (), values: dict[str, Any] | None = None) -> None:
        """Apply an update only while ``owner`` holds the lease at ``counter``; it bumps the counter
        and stores ``write_id`` (see ``Lease.last_write``).

        Raises LeaseLostError when the condition fails: the lease moved since ``counter``.
        """
        all_values = {":counter": {"N": str(counter)}, ":me": {"S": owner}, ":one": {"N": "1"},
                      ":write": {"S": write_id}, **(values or {})}
        try:
            await self.call(
                "update_item", TableName=self.table, Key=self._key(shard_id),
                UpdateExpression=update_expression(
                    ["leaseCounter = leaseCounter + :one", "streamfnWrite = :write", *sets], list(removes)),
                ConditionExpression="leaseCounter = :counter AND leaseOwner = :me",
                ExpressionAttributeValues=all_values,
            )
        except Exception as exc:
            if is_condition_failure(exc):
                raise LeaseLostError(f"lease of shard {shard_id} lost (owner or counter changed)") from exc
            raise

    async def renew(self, shard_id: str, owner: str, counter: int, write_id: str) -> None:
        await self.fenced_update(shard_id, owner, counter, write_id, [])

    async def release(self, shard_id: str, owner: str, counter: int, write_id: str) -> None:
        await self.fenced_update(shard_id, owner, counter, write_id, [], ["leaseOwner"])

    async def write_checkpoint(self, shard_id: str, owner: str, counter: int, write_id: str,
                               checkpoint: Checkpoint) -> None:
        sets, removes, values = checkpoint_update(checkpoint)
        await self.fenced_update(shard_id, owner, counter, write_id, sets, removes, values)

    async def overwrite(self, lease: Lease, sets: list[str], removes: Sequence[str], values: dict[str, Any], *,
                        force: bool = False) -> None:
        """An operator's edit, applied only if the lease did not move since it was read; forced,
        it applies whatever the lease's state. Either way it bumps the counter, so a worker that
        held the lease fails its next write and stops the shard."""
        all_values = {":one": {"N": "1"}, **values}
        if force:
            condition = "attribute_exists(leaseKey)"
        else:
            condition = "leaseCounter = :counter"
            all_values[":counter"] = {"N": str(lease.counter)}
        try:
            await self.call(
                "update_item", TableName=self.table, Key=self._key(lease.shard_id),
                UpdateExpression=update_expression(["leaseCounter = leaseCounter + :one", *sets], list(removes)),
                ConditionExpression=condition, ExpressionAttributeValues=all_values,
            )
        except Exception as exc:
            if is_condition_failure(exc):
                raise CheckpointError(f"lease of shard {lease.shard_id} changed while being edited") from exc
            raise


async def retrying(what: str, call: Callable[[], Awaitable[T]], *, attempts: int = 5, delay: float = 0.2) -> T:
    """Retry a transient failure a few times with doubling delays (used for one-off reads)."""
    for attempt in range(attempts):
        try:
            return await call()
        except RetryableError as exc:
            if attempt == attempts - 1:
                raise
            log.warning("%s failed, retrying: %s", what, exc)
            await asyncio.sleep(delay * 2**attempt)
    raise AssertionError("unreachable")
