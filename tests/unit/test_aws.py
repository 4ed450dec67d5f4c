"""Pure logic of the AWS connectors: backoff, error classes, region, UnprocessedItems retries."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from streamfn.aws import classify, is_retryable, resolve_region
from streamfn.backoff import Backoff
from streamfn.errors import RetryableError, SinkError, SourceError
from streamfn.records import Position
from streamfn.sinks.base import SinkBatch
from streamfn.sinks.dynamodb import DynamoDBSink, DynamoDBSinkConfig


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "GetRecords")


def test_backoff_grows_to_its_cap_with_full_jitter_and_resets() -> None:
    backoff = Backoff(0.1, 1.0)
    ceilings = []
    for _ in range(8):
        ceilings.append(backoff.ceiling())
        assert 0.0 <= backoff.next_delay() <= ceilings[-1]
    assert ceilings[:5] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0]) and ceilings[-1] == 1.0
    backoff.reset()
    assert backoff.ceiling() == 0.1 and backoff.failures == 0
    with pytest.raises(ValueError):
        Backoff(1.0, 0.5)


def test_throttles_timeouts_and_5xx_are_retryable_others_fatal() -> None:
    for code in ("ProvisionedThroughputExceededException", "LimitExceededException", "ThrottlingException",
                 "SlowDown", "InternalFailure"):
        assert is_retryable(client_error(code))
    assert is_retryable(client_error("SomethingNew", 503))
    assert is_retryable(EndpointConnectionError(endpoint_url="http://x"))
    assert is_retryable(ReadTimeoutError(endpoint_url="http://x"))
    assert is_retryable(TimeoutError())
    assert not is_retryable(client_error("AccessDeniedException"))
    assert not is_retryable(client_error("ResourceNotFoundException"))
    assert isinstance(classify(client_error("ProvisionedThroughputExceededException"), "kinesis", "GetRecords",
                               SourceError), RetryableError)
    fatal = classify(client_error("ValidationException"), "s3", "PutObject", SinkError)
    assert type(fatal) is SinkError and "ValidationException" in str(fatal)


def test_region_from_config_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    assert resolve_region("ap-south-1") == "ap-south-1"
    assert resolve_region(None) == "eu-west-3"


class FakeDynamoDB:
    """Answers BatchWriteItem leaving the last item of each request unprocessed, twice."""

    def __init__(self) -> None:
        self.requests: list[list[dict[str, Any]]] = []
        self.written: list[dict[str, Any]] = []

    async def call(self, operation: str, fatal: Any, **kwargs: Any) -> dict[str, Any]:
        assert operation == "batch_write_item"
        (table, requests), = kwargs["RequestItems"].items()
        assert len(requests) <= 25
        self.requests.append(requests)
        if len(self.requests) <= 2 and len(requests) > 1:
            self.written += [r["PutRequest"]["Item"] for r in requests[:-1]]
            return {"UnprocessedItems": {table: requests[-1:]}}
        self.written += [r["PutRequest"]["Item"] for r in requests]
        return {"UnprocessedItems": {}}


async def test_unprocessed_items_are_sent_again_until_written() -> None:
    sink = DynamoDBSink(DynamoDBSinkConfig(table="t", backoff_initial=0.001, backoff_max=0.002, concurrency=1))
    fake = FakeDynamoDB()
    sink.aws = fake  # type: ignore[assignment]
    sink.key_names = ("id",)
    items = [{"id": f"k{i}"} for i in range(30)] + [{"id": "k0", "v": 2}]
    await sink.write(SinkBatch(pipeline="p", stream="s", shard_id="0", first=Position(1), last=Position(2),
                               first_arrival=0.0, items=items))
    assert sorted(item["id"]["S"] for item in fake.written) == sorted(f"k{i}" for i in range(30))
    assert {"id": {"S": "k0"}, "v": {"N": "2"}} in fake.written  # the later item of a repeated key wins
    assert sink.unprocessed_retries == 2 and sorted(len(r) for r in fake.requests) == [1, 1, 5, 25]
