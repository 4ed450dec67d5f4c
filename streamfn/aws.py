"""AWS clients for the connectors: one place for region, endpoint, timeouts and error classes.

Every connector takes an ``endpoint_url`` and ``region``; when they are unset, the standard
chain applies (``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_<SERVICE>``, ``AWS_REGION``,
``AWS_DEFAULT_REGION``, profiles). Botocore's own retries are off: connectors retry with
:class:`streamfn.backoff.Backoff` so that throttling never breaks the per-shard read discipline.
Credentials are resolved by botocore and never pass through this module's logging.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from .errors import RetryableError, StreamfnError

DEFAULT_REGION = "us-east-1"

#: Error codes that mean "slow down" or "try again": retried with backoff, never fatal.
RETRYABLE_CODES = frozenset({
    "ProvisionedThroughputExceededException",
    "LimitExceededException",
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalFailure",
    "InternalError",
    "InternalServerError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "KMSThrottlingException",
    "TransactionInProgressException",
})


def resolve_region(region: str | None) -> str:
    """The configured region, else the environment's, else us-east-1 (emulators accept any)."""
    if region:
        return region
    env = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if env:
        return env
    try:
        from aiobotocore.session import get_session

        configured = get_session().get_config_variable("region")
    except Exception:  # a broken profile file must not stop a pipeline that names its region
        configured = None
    return str(configured) if configured else DEFAULT_REGION


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ``ClientError``, else None."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code else None
    return None


def http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status is not None else None
    return None


def is_retryable(exc: BaseException) -> bool:
    """Throttling, timeouts, connection failures and 5xx answers."""
    if isinstance(exc, RetryableError):
        return True
    if isinstance(exc, StreamfnError):
        return False
    code = error_code(exc)
    if code is not None:
        status = http_status(exc)
        return code in RETRYABLE_CODES or (status is not None and status >= 500)
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, ConnectionError)):
        return True
    try:
        from aiohttp import ClientError
        from botocore.exceptions import (
            ConnectionError as BotoConnectionError,
        )
        from botocore.exceptions import (
            HTTPClientError,
            ReadTimeoutError,
        )
    except ImportError:  # pragma: no cover - aiobotocore is a dependency
        return False
    return isinstance(exc, (BotoConnectionError, HTTPClientError, ReadTimeoutError, ClientError, OSError))


def classify(exc: BaseException, service: str, operation: str, fatal: type[StreamfnError]) -> StreamfnError:
    """``RetryableError`` for transient failures, else ``fatal`` (SourceError, SinkError...)."""
    code = error_code(exc)
    detail = f"{code}: {exc}" if code else repr(exc)
    message = f"{service} {operation} failed: {detail}"
    if is_retryable(exc):
        return RetryableError(message)
    return fatal(message)


class AwsClient:
    """One aiobotocore client, opened and closed with the connector that owns it."""

    def __init__(self, service: str, *, endpoint_url: str | None = None, region: str | None = None,
                 timeout: float = 30.0, max_pool_connections: int = 64) -> None:
        self.service = service
        self.endpoint_url = endpoint_url or None
        self.region = resolve_region(region)
        self.timeout = timeout
        self._max_pool = max_pool_connections
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError(f"{self.service} client used before open()")
        return self._client

    async def open(self) -> Any:
        if self._client is not None:
            return self._client
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        config = AioConfig(
            connect_timeout=min(self.timeout, 10.0),
            read_timeout=self.timeout,
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=self._max_pool,
            s3={"addressing_style": "path"} if self.service == "s3" and self.endpoint_url else None,
        )
        stack = contextlib.AsyncExitStack()
        self._client = await stack.enter_async_context(
            get_session().create_client(self.service, endpoint_url=self.endpoint_url, region_name=self.region,
                                        config=config)
        )
        self._stack = stack
        return self._client

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack, self._client = self._stack, None, None
            await stack.aclose()

    async def call(self, operation: str, fatal: type[StreamfnError], **kwargs: Any) -> dict[str, Any]:
        """One request, bounded by the timeout; failures come back classified."""
        try:
            async with asyncio.timeout(self.timeout + 5.0):
                result: dict[str, Any] = await getattr(self.client, operation)(**kwargs)
        except StreamfnError:
            raise
        except Exception as exc:
            raise classify(exc, self.service, operation, fatal) from exc
        return result
