"""The contract every Source and ShardReader keeps (see streamfn/protocols/source.py), on real servers.

One suite, parametrised over streamfn.testing's MemorySource, the local log, Kinesis (kinesis-mock
and kinesalite), DynamoDB Streams (moto) and Kafka (Tansu). A kit knows how to make a stream and
write numbered records to it; the tests know only the Source protocol: shards listed, every record
read once and in write order within its shard, a reader resuming strictly after a position or at
one, ``latest`` seeing only what comes after it, and close that may be called again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from streamfn.protocols.source import ShardInfo, ShardReader, Source, StartingPosition
from streamfn.records import Record
from tests.contract.kits import SOURCE_KINDS, SourceKit, source_kit
from tests.throttle_proxy import ThrottleProxy

TRIM = StartingPosition()
COUNT = 24


@pytest.fixture(params=SOURCE_KINDS)
async def kit(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SourceKit]:
    made = await source_kit(request.param, request, tmp_path)
    try:
        yield made
    finally:
        await made.cleanup()


async def read_everything(source: Source, shards: list[ShardInfo], expect: int, start: StartingPosition = TRIM,
                          timeout: float = 30.0) -> dict[str, list[Record]]:
    """Records per shard, read concurrently until ``expect`` arrived in all (then one more empty read)."""
    readers = {shard.shard_id: source.reader(shard, None, start) for shard in shards}
    try:
        return await read_until(readers, expect, timeout)
    finally:
        for reader in readers.values():
            await reader.close()


async def read_until(readers: dict[str, ShardReader], expect: int, timeout: float = 30.0) -> dict[str, list[Record]]:
    got: dict[str, list[Record]] = {shard_id: [] for shard_id in readers}
    async with asyncio.timeout(timeout):
        while sum(map(len, got.values())) < expect:
            for shard_id, reader in readers.items():
                got[shard_id] += (await reader.read(100, 0.05)).records
        for shard_id, reader in readers.items():  # nothing beyond what was written
            got[shard_id] += (await reader.read(100, 0.05)).records
    return got


def numbers(kit: SourceKit, records: list[Record]) -> list[int]:
    return [kit.number(record) for record in records]


async def test_every_record_is_read_once_in_write_order_within_its_shard(kit: SourceKit) -> None:
    await kit.write(range(COUNT))
    source = await kit.open_source()
    shards = await source.list_shards()
    assert len({s.shard_id for s in shards}) == len(shards) >= kit.min_shards
    listed = [s.shard_id for s in shards]
    assert all(listed.index(parent) < listed.index(s.shard_id)  # parents before children
               for s in shards for parent in s.parent_ids if parent in listed)
    got = await read_everything(source, shards, COUNT)
    assert sorted(n for records in got.values() for n in numbers(kit, records)) == list(range(COUNT))
    for shard_id, records in got.items():
        assert all(r.shard_id == shard_id for r in records)
        assert numbers(kit, records) == sorted(numbers(kit, records))  # written in this order
        positions = [r.position for r in records]
        assert positions == sorted(positions) and len(set(positions)) == len(positions)
        assert all(r.arrival_time > 1e9 for r in records)


async def test_a_reader_resumes_strictly_after_a_position_or_at_one(kit: SourceKit) -> None:
    await kit.write(range(COUNT))
    source = await kit.open_source()
    shards = await source.list_shards()
    got = await read_everything(source, shards, COUNT)
    shard_id, records = max(got.items(), key=lambda item: len(item[1]))
    assert len(records) >= 3
    shard = next(s for s in shards if s.shard_id == shard_id)
    middle = records[len(records) // 2]
    expected_after = numbers(kit, records[len(records) // 2 + 1:])

    after = source.reader(shard, middle.position, TRIM)
    resumed = (await read_until({shard_id: after}, len(expected_after)))[shard_id]
    await after.close()
    assert numbers(kit, resumed) == expected_after

    at = source.reader(shard, None, StartingPosition("at_sequence", position=middle.position))
    from_middle = (await read_until({shard_id: at}, len(expected_after) + 1))[shard_id]
    await at.close()
    assert numbers(kit, from_middle) == [kit.number(middle), *expected_after]
    assert from_middle[0].position == middle.position


async def test_latest_sees_only_records_written_after_the_reader_started(kit: SourceKit) -> None:
    await kit.write(range(COUNT))
    source = await kit.open_source()
    shards = await source.list_shards()
    readers = {shard.shard_id: source.reader(shard, None, StartingPosition("latest")) for shard in shards}
    try:
        for reader in readers.values():  # a first read positions each reader at the tip
            assert (await reader.read(100, 0.05)).records == []
        await kit.write([COUNT, COUNT + 1])
        got = await read_until(readers, 2)
    finally:
        for reader in readers.values():
            await reader.close()
    assert sorted(n for records in got.values() for n in numbers(kit, records)) == [COUNT, COUNT + 1]


async def test_throttled_reads_are_retried_inside_the_reader_from_the_last_record(kit: SourceKit) -> None:
    if kit.throttle is None:
        pytest.skip("this source has no AWS server to throttle it")
    await kit.write(range(COUNT // 2))
    async with ThrottleProxy(kit.endpoint) as proxy:
        source = await kit.open_source(proxy.endpoint)
        shards = await source.list_shards()
        readers = {shard.shard_id: source.reader(shard, None, TRIM) for shard in shards}
        try:
            got = await read_until(readers, COUNT // 2)
            proxy.inject(kit.throttle, 3)
            await kit.write(range(COUNT // 2, COUNT))
            more = await read_until(readers, COUNT // 2)
        finally:
            for reader in readers.values():
                await reader.close()
    assert proxy.injected[kit.throttle] == 3
    for shard_id, records in more.items():
        got[shard_id] += records
    assert sorted(n for records in got.values() for n in numbers(kit, records)) == list(range(COUNT))
    for records in got.values():
        assert numbers(kit, records) == sorted(numbers(kit, records))


async def test_a_split_shard_ends_and_its_children_follow_it(kit: SourceKit) -> None:
    if not kit.splits:
        pytest.skip("this source's shards never close")
    await kit.write(range(COUNT // 2))
    await kit.split()
    await kit.write(range(COUNT // 2, COUNT))
    source = await kit.open_source()
    shards = await source.list_shards()
    listed = [s.shard_id for s in shards]
    children = [s for s in shards if s.parent_ids]
    assert len(children) == 2
    parent = next(s for s in shards if s.shard_id == children[0].parent_ids[0])
    assert all(listed.index(parent.shard_id) < listed.index(child.shard_id) for child in children)
    reader = source.reader(parent, None, TRIM)
    ended, before = False, []
    async with asyncio.timeout(30):
        while not ended:
            result = await reader.read(100, 0.05)
            before += result.records
            ended = result.shard_end
    await reader.close()
    after = await read_everything(source, [s for s in shards if s is not parent], COUNT - len(before))
    assert sorted(numbers(kit, before) + [n for records in after.values() for n in numbers(kit, records)]) \
        == list(range(COUNT))
    assert all(n < COUNT // 2 for n in numbers(kit, before))  # nothing lands on a closed shard


async def test_close_may_be_called_again(kit: SourceKit) -> None:
    await kit.write(range(3))
    source = await kit.open_source()
    shard = (await source.list_shards())[0]
    reader = source.reader(shard, None, TRIM)
    await reader.read(10, 0.05)
    await reader.close()
    await reader.close()
    await source.close()
    await source.close()

