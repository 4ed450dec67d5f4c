"""SQS and SNS throttling answers are retried (matched by AWS error code), other rejections are final."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from streamfn.aws import classify
from streamfn.errors import RetryableError, SinkError


def _error(code: str, status: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "whatever the text says"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "SendMessage")


@pytest.mark.parametrize("code", ["RequestThrottled", "KmsThrottled", "Throttled", "KMSThrottling"])
def test_throttling_codes_are_retried(code: str) -> None:
    error = classify(_error(code), "sqs", "send_message", SinkError)
    assert isinstance(error, RetryableError) and error.kind == "throttled"


@pytest.mark.parametrize("code", ["InvalidMessageContents", "QueueDoesNotExist", "NotFound", "InvalidParameter"])
def test_rejections_are_final(code: str) -> None:
    assert type(classify(_error(code), "sns", "publish", SinkError)) is SinkError
