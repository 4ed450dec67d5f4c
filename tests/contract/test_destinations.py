"""The contract every on-failure Destination keeps (see streamfn/destinations/base.py), on real
servers.

Parametrised over streamfn.testing's MemoryDestination, the local folder, S3 (moto), a local log
stream, Kinesis (kinesis-mock), Kafka (Tansu), and SQS (standard and FIFO) and SNS on moto. Each
stores a failure record in Lambda's shape with the failed records in it; the keyed ones (folder, S3,
a FIFO queue by its deduplication id) store a failure sent twice once, the streams append each send
whole; a throttled server is a ``RetryableError``; ``close`` may be called again.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from streamfn.errors import RetryableError
from streamfn.protocols.destination import Destination, FailedBatch
from streamfn.records import Record
from tests.contract.kits import DESTINATION_KINDS, DestinationKit, destination_kit
from tests.throttle_proxy import ANY, ThrottleProxy

KINESIS_SEQUENCE = 49590338271490256608559692538361571095921575989136588898


def failure(error: str = "boom") -> FailedBatch:
    records = [Record("shardId-000000000001", KINESIS_SEQUENCE + i, f"k{i}", b'{"n": %d}' % i,
                      1_767_225_600.0 + i) for i in range(3)]
    return FailedBatch(pipeline="contract", stream="orders", source_kind="kinesis", shard_id=records[0].shard_id,
                       condition="RetryAttemptsExhausted", records=records, invoke_count=4, error=error,
                       failed_at=1_767_225_700.0)


def assert_describes(document: dict[str, Any], sent: FailedBatch) -> None:
    """``document`` is Lambda's failure record for ``sent``, with every record's data in it."""
    assert document["requestContext"]["condition"] == sent.condition
    assert document["requestContext"]["approximateInvokeCount"] == sent.invoke_count
    info = document["KinesisBatchInfo"]
    assert info["shardId"] == sent.shard_id
    assert info["startSequenceNumber"] == str(sent.records[0].sequence)
    assert info["endSequenceNumber"] == str(sent.records[-1].sequence)
    assert info["batchSize"] == len(sent.records)
    assert [base64.b64decode(r["data"]) for r in document["records"]] == [r.data for r in sent.records]


@pytest.fixture(params=DESTINATION_KINDS)
async def kit(request: pytest.FixtureRequest, tmp_path: Path) -> DestinationKit:
    made = destination_kit(request.param, request, tmp_path)
    await made.prepare()
    return made


async def test_a_failure_is_stored_in_lambda_shape_with_its_records(kit: DestinationKit) -> None:
    destination: Destination = kit.build()
    await destination.open()
    try:
        sent = failure()
        await destination.send(sent)
    finally:
        await destination.close()
    [document] = await kit.documents()
    assert_describes(document, sent)
    assert document["errorMessage"] == "boom"


async def test_a_failure_sent_twice_is_stored_once_where_the_destination_is_keyed(kit: DestinationKit) -> None:
    destination: Destination = kit.build()
    await destination.open()
    try:
        sent = failure()
        await destination.send(sent)
        await destination.send(sent)  # a crash between the send and the checkpoint
    finally:
        await destination.close()
    documents = await kit.documents()
    assert len(documents) == (1 if kit.idempotent else 2)
    for document in documents:  # a stream holds each send whole: a reader dedupes by batch info
        assert_describes(document, sent)


async def test_an_error_text_json_cannot_hold_is_stored_spelled_out(kit: DestinationKit) -> None:
    destination: Destination = kit.build()
    await destination.open()
    try:
        await destination.send(failure(error="bad bytes: \udcff"))
    finally:
        await destination.close()
    [document] = await kit.documents()
    assert document["errorMessage"] == "bad bytes: \\udcff"


async def test_throttling_is_retryable(kit: DestinationKit) -> None:
    if kit.throttle is None:
        pytest.skip("no server to throttle")
    target, status, code = kit.throttle
    async with ThrottleProxy(kit.endpoint) as proxy:
        destination: Destination = kit.build(proxy.endpoint)
        await destination.open()
        try:
            proxy.inject(target or ANY, 1, status=status, error_type=code)
            with pytest.raises(RetryableError):
                await destination.send(failure())
            await destination.send(failure())
        finally:
            await destination.close()
    assert proxy.injected[target] == 1
    assert len(await kit.documents()) == 1


async def test_close_may_be_called_again(kit: DestinationKit) -> None:
    destination: Destination = kit.build()
    await destination.open()
    await destination.send(failure())
    await destination.close()
    await destination.close()
    assert len(await kit.documents()) == 1
