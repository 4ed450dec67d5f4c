"""Pure logic of the AWS connectors: backoff, error classes and kinds, region, encoding, UnprocessedItems."""

from __future__ import annotations

import socket
from decimal import Decimal
from typing import Any

import aiohttp
import msgspec
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ParamValidationError,
    ReadTimeoutError,
)
from hypothesis import given
from hypothesis import strategies as st

from streamfn.aws import RETRYABLE_CODES, classify, error_code, is_retryable, resolve_region, retry_kind
from streamfn.backoff import Backoff
from streamfn.connectors.dynamodb.sink import DynamoDBSink, DynamoDBSinkConfig
from streamfn.connectors.lease_table.store import DynamoDBCheckpointStore, DynamoDBCheckpointStoreConfig
from streamfn.connectors.lease_table.table import is_condition_failure
from streamfn.connectors.s3.sink import S3Sink, S3SinkConfig
from streamfn.errors import CheckpointError, HandlerError, RetryableError, SinkError, SourceError
from streamfn.protocols.sink import SinkBatch
from streamfn.records import Position


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


@pytest.mark.parametrize(("code", "status", "kind"), [
    ("ProvisionedThroughputExceededException", 400, "throttled"),
    ("ThrottlingException", 400, "throttled"),
    ("SlowDown", 503, "throttled"),
    ("RequestLimitExceeded", 400, "throttled"),
    ("RequestTimeout", 400, "timeout"),
    ("InternalServerError", 500, "server"),
    ("ServiceUnavailable", 503, "server"),
    ("SomethingNew", 502, "server"),
    ("TransactionInProgressException", 400, "conflict"),
])
def test_retryable_answers_get_their_kind_from_the_code(code: str, status: int, kind: str) -> None:
    error = classify(client_error(code, status), "s3", "PutObject", SinkError)
    assert type(error) is RetryableError and error.kind == kind and code in str(error)


@pytest.mark.parametrize("fatal", [SinkError, CheckpointError, SourceError])
@pytest.mark.parametrize(("code", "status"), [
    ("ValidationException", 400), ("AccessDenied", 403), ("AccessDeniedException", 400), ("NoSuchBucket", 404),
    ("ConditionalCheckFailedException", 400), ("ItemCollectionSizeLimitExceededException", 400),
])
def test_final_answers_take_the_callers_class(code: str, status: int, fatal: type[SinkError]) -> None:
    error = classify(client_error(code, status), "dynamodb", "PutItem", fatal)
    assert type(error) is fatal and code in str(error)


@pytest.mark.parametrize(("exc", "kind"), [
    (TimeoutError(), "timeout"),
    (ReadTimeoutError(endpoint_url="http://x"), "timeout"),
    (ConnectTimeoutError(endpoint_url="http://x"), "timeout"),
    (aiohttp.ServerTimeoutError("read"), "timeout"),
    (EndpointConnectionError(endpoint_url="http://x"), "connection"),
    (ConnectionClosedError(endpoint_url="http://x"), "connection"),
    (ConnectionRefusedError(111, "refused"), "connection"),
    (ConnectionResetError(104, "reset"), "connection"),
    (socket.gaierror(-2, "Name or service not known"), "connection"),
    (aiohttp.ClientConnectionError(), "connection"),
    (RetryableError("disk full", kind="storage"), "storage"),
])
def test_transport_failures_get_their_kind_from_their_type(exc: BaseException, kind: str) -> None:
    assert retry_kind(exc) == kind
    error = classify(exc, "dynamodb", "UpdateItem", CheckpointError)
    assert isinstance(error, RetryableError) and error.kind == kind


def test_other_failures_are_final() -> None:
    for exc in (ParamValidationError(report="Body: wrong type"), ValueError("x"), SinkError("bad item"),
                HandlerError("boom"), CheckpointError("gone")):
        assert retry_kind(exc) is None
        assert type(classify(exc, "s3", "PutObject", SinkError)) is SinkError


@given(code=st.text(min_size=1, max_size=40), status=st.integers(100, 599), message=st.text(max_size=60))
def test_the_code_and_status_decide_never_the_message(code: str, status: int, message: str) -> None:
    error = ClientError({"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}},
                        "PutItem")
    for decoy in ("Throttling", "timed out", "InternalError", "connection reset"):
        noisy = ClientError({"Error": {"Code": code, "Message": decoy + message},
                             "ResponseMetadata": {"HTTPStatusCode": status}}, "PutItem")
        assert retry_kind(noisy) == retry_kind(error)
    expected = RETRYABLE_CODES.get(code) or ("server" if status >= 500 else None)
    assert retry_kind(error) == expected
    assert error_code(classify(error, "s3", "PutObject", SinkError).__cause__ or error) == code


def test_a_failed_condition_is_recognised_through_the_checkpoint_error() -> None:
    raw = client_error("ConditionalCheckFailedException")
    try:
        raise classify(raw, "dynamodb", "UpdateItem", CheckpointError) from raw
    except CheckpointError as wrapped:
        assert is_condition_failure(wrapped) and is_condition_failure(raw)
    assert not is_condition_failure(CheckpointError("other"))


def sink_batch(items: list[Any]) -> SinkBatch:
    return SinkBatch(pipeline="p", stream="s", shard_id="0", first=Position(1), last=Position(2),
                     first_arrival=0.0, items=items)


@pytest.mark.parametrize("item", [{"amount": Decimal("1.5")}, {"tags": {"a"}}, {"when": object()}, Decimal(1)])
def test_the_s3_sink_refuses_output_that_is_not_json_as_a_sink_error(item: Any) -> None:
    sink = S3Sink(S3SinkConfig(bucket="b"))
    with pytest.raises(SinkError, match="cannot be written as JSON"):
        sink.body_for(sink_batch([{"ok": 1}, item]))
    assert sink.body_for(sink_batch([{"big": 2**70, "x": 0.5}])) == b'{"big":1180591620717411303424,"x":0.5}\n'


@pytest.mark.parametrize("item", [
    {"id": "a", "v": float("nan")}, {"id": "a", "v": float("inf")}, {"id": "a", "v": Decimal("NaN")},
    {"id": "a", "v": Decimal("-Infinity")}, {"id": "a", "v": set()}, {"id": "a", "v": {1, "x"}},
    {"id": "a", "v": object()}, ["not", "a", "dict"], {"no_key": 1},
])
async def test_the_dynamodb_sink_refuses_items_it_cannot_encode_as_a_sink_error(item: Any) -> None:
    sink = DynamoDBSink(DynamoDBSinkConfig(table="t"))
    fake = FakeDynamoDB()
    sink.aws = fake  # type: ignore[assignment]
    sink.key_names = ("id",)
    with pytest.raises(SinkError):
        await sink.write(sink_batch([{"id": "fine"}, item]))
    assert fake.requests == []  # nothing of the batch was sent


async def test_the_dynamodb_sink_writes_floats_and_decimals_as_numbers() -> None:
    sink = DynamoDBSink(DynamoDBSinkConfig(table="t"))
    fake = FakeDynamoDB()
    sink.aws = fake  # type: ignore[assignment]
    sink.key_names = ("id",)
    await sink.write(sink_batch([{"id": "a", "f": 0.1, "d": Decimal("12.3400"), "n": {1.5, Decimal(2)}}]))
    assert fake.written == [{"id": {"S": "a"}, "f": {"N": "0.1"}, "d": {"N": "12.3400"}, "n": {"NS": ["1.5", "2"]}}]


async def test_versions_that_do_not_compare_are_a_sink_error() -> None:
    sink = DynamoDBSink(DynamoDBSinkConfig(table="t", version_attribute="v"))
    sink.key_names = ("id",)
    with pytest.raises(SinkError, match="do not compare"):
        await sink.write(sink_batch([{"id": "a", "v": 1}, {"id": "a", "v": "2"}]))


def test_the_lease_store_request_timeout_stays_below_failover_time() -> None:
    config = msgspec.convert({"type": "dynamodb", "failover_time": 6.0, "request_timeout": 2.0},
                             DynamoDBCheckpointStoreConfig)
    assert config.settings("p").request_timeout == 2.0
    assert DynamoDBCheckpointStore(config.settings("p")).table.aws.timeout == 2.0
    default = DynamoDBCheckpointStoreConfig(failover_time=8.0).settings("p")
    assert DynamoDBCheckpointStore(default).table.aws.timeout == 4.0  # failover_time / 2
    with pytest.raises(msgspec.ValidationError, match="below failover_time"):
        msgspec.convert({"type": "dynamodb", "failover_time": 6.0, "request_timeout": 6.0},
                        DynamoDBCheckpointStoreConfig)


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
