"""The contract every Sink keeps (see streamfn/sinks/base.py), on real servers.

Parametrised over streamfn.testing's MemorySink, stdout (which prints a replay again), the local
folder sink, S3 and DynamoDB (moto). A batch written twice (a replay after a crash) is stored once;
items keep their order; a throttled or unreachable server surfaces as ``RetryableError`` and the
retry lands once; an item the sink cannot encode is a ``SinkError`` (the batch fails through the
failure policy); ``close`` may be called again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from streamfn.errors import RetryableError, SinkError
from streamfn.protocols.sink import Sink, SinkBatch
from streamfn.records import Position
from tests.contract.kits import SINK_KINDS, SinkKit, sink_kit
from tests.outage_proxy import OutageProxy
from tests.throttle_proxy import ANY, ThrottleProxy

ITEMS = [{"id": "a", "n": 1}, {"id": "b", "n": 2}, {"id": "a", "n": 3}, {"id": "c", "n": 4}]


def batch(items: list[Any], first: int = 10, last: int = 13) -> SinkBatch:
    return SinkBatch(pipeline="contract", stream="orders", shard_id="shard-0001", first=Position(first),
                     last=Position(last), first_arrival=1_767_225_600.0, items=items)


def as_stored(kit: SinkKit, *batches: list[Any]) -> list[list[Any]]:
    """What ``kit`` holds after writing ``batches`` (in order, each to its own object)."""
    if not kit.replays_once:  # one stream of lines
        return [[item for items in batches for item in items]]
    if kit.objects:
        return [list(items) for items in batches]
    table: dict[str, Any] = {}
    for items in batches:
        for item in items:
            table[item["id"]] = item  # the later item of a key wins
    return [sorted(table.values(), key=lambda item: str(item["id"]))]


@pytest.fixture(params=SINK_KINDS)
async def kit(request: pytest.FixtureRequest, tmp_path: Path) -> SinkKit:
    made = sink_kit(request.param, request, tmp_path)
    await made.prepare()
    return made


@pytest.fixture
async def sink(kit: SinkKit) -> AsyncIterator[Sink]:
    opened: Sink = kit.build()
    await opened.open()
    yield opened
    await opened.close()


async def test_the_same_batch_written_twice_is_stored_once_in_order(kit: SinkKit, sink: Sink) -> None:
    await sink.write(batch(ITEMS))
    await sink.write(batch(ITEMS))  # a replay after a crash: same records, same bounds
    assert await kit.stored() == (as_stored(kit, ITEMS) if kit.replays_once else as_stored(kit, ITEMS, ITEMS))


async def test_batches_with_other_bounds_are_stored_apart(kit: SinkKit, sink: Sink) -> None:
    later = [{"id": "d", "n": 5}, {"id": "a", "n": 6}]
    await sink.write(batch(ITEMS))
    await sink.write(batch(later, first=14, last=15))
    assert await kit.stored() == as_stored(kit, ITEMS, later)


async def test_an_item_the_sink_cannot_encode_fails_the_batch(kit: SinkKit, sink: Sink) -> None:
    with pytest.raises(SinkError):
        await sink.write(batch([{"id": "a", "n": 1}, {"id": "b", "bad": object()}]))
    assert await kit.stored() in ([], [[]])  # nothing half-written


async def test_throttling_is_retryable_and_the_retry_lands_once(kit: SinkKit) -> None:
    if kit.throttle is None:
        pytest.skip("this sink has no server to throttle it")
    target, status, code = kit.throttle
    async with ThrottleProxy(kit.endpoint) as proxy:
        sink: Sink = kit.build(proxy.endpoint)
        await sink.open()
        try:
            proxy.inject(target or ANY, 1, status=status, error_type=code)
            with pytest.raises(RetryableError) as raised:
                await sink.write(batch(ITEMS))
            assert raised.value.kind == "throttled"
            await sink.write(batch(ITEMS))  # what the engine does next
        finally:
            await sink.close()
    assert proxy.injected[target] == 1
    assert await kit.stored() == as_stored(kit, ITEMS)


async def test_an_unreachable_server_is_retryable(kit: SinkKit) -> None:
    if kit.throttle is None:
        pytest.skip("this sink has no server")
    async with OutageProxy(kit.endpoint) as proxy:
        sink: Sink = kit.build(proxy.endpoint)
        await sink.open()
        try:
            await proxy.refuse()
            with pytest.raises(RetryableError) as raised:
                await sink.write(batch(ITEMS))
            assert raised.value.kind == "connection"
            await proxy.restore()
            await sink.write(batch(ITEMS))
        finally:
            await sink.close()
    assert await kit.stored() == as_stored(kit, ITEMS)


async def test_close_may_be_called_again(kit: SinkKit) -> None:
    sink: Sink = kit.build()
    await sink.open()
    await sink.write(batch(ITEMS))
    await sink.close()
    await sink.close()
    assert await kit.stored() == as_stored(kit, ITEMS)
