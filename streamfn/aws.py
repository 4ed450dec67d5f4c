"""AWS clients for the connectors: one place for region, endpoint, profile, timeouts and error classes.

Every AWS part takes an ``endpoint_url``, ``region`` and ``request_timeout``; a part's own value wins,
then the pipeline's ``[aws]`` section (:class:`AwsSettings`, which also names the credentials ``profile``),
then the standard chain (``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_<SERVICE>``, ``AWS_REGION``,
``AWS_DEFAULT_REGION``, the profile's region) or the part's default timeout. Botocore's own retries
are off: connectors retry with :class:`streamfn.backoff.Backoff` so that throttling never breaks the
per-shard read discipline.
A client's timeout bounds each call as a whole (pool wait, connect, send, answer), and every
failure leaves :meth:`AwsClient.call` classified by its error code or exception type.
Credentials are resolved by botocore and never pass through this module's logging.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Annotated, Any

import msgspec

from .errors import ConfigError, RetryableError, StreamfnError

DEFAULT_REGION = "us-east-1"

#: Seconds, more than zero: the type of every ``request_timeout`` setting.
Timeout = Annotated[float, msgspec.Meta(gt=0)]

#: Error codes that mean "try again", with the kind metrics and logs count them under. Anything
#: else with a 5xx status is a "server" failure too; every other code is final.
RETRYABLE_CODES: dict[str, str] = {
    **dict.fromkeys((
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
        "KMSThrottlingException",
        "KmsThrottled",  # SQS
        "Throttled",  # SNS ThrottledException
        "KMSThrottling",  # SNS
    ), "throttled"),
    **dict.fromkeys(("RequestTimeout", "RequestTimeoutException"), "timeout"),
    **dict.fromkeys((
        "InternalFailure",
        "InternalError",
        "InternalServerError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
    ), "server"),
    "TransactionInProgressException": "conflict",
}


class AwsSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The pipeline's ``[aws]`` section: what every AWS part uses where it sets nothing of its own.

    Declared once so that a pipeline reading Kinesis and writing S3 names its region, its
    endpoint (an emulator, a VPC endpoint) and its credentials profile in one place.
    """

    region: Annotated[str | None, msgspec.Meta(description=(
        "AWS region of every AWS part that sets none; default `AWS_REGION` / `AWS_DEFAULT_REGION` / the "
        "profile's region."))] = None
    endpoint_url: Annotated[str | None, msgspec.Meta(description=(
        "Endpoint of every AWS part that sets none (an emulator such as moto or LocalStack, a VPC endpoint); "
        "default `AWS_ENDPOINT_URL_<SERVICE>` / `AWS_ENDPOINT_URL` / AWS."))] = None
    profile: Annotated[str | None, msgspec.Meta(description=(
        "Named profile of the shared AWS config and credentials files every AWS part signs with; default "
        "`AWS_PROFILE`, else the standard chain (environment keys, `default` profile, instance role)."))] = None
    request_timeout: Annotated[Timeout | None, msgspec.Meta(description=(
        "Seconds one request of every AWS part that sets none may take in all (connect, send, answer) before "
        "it is retried; default each part's own (30 s, 60 s for the S3 sink; the lease table's at most "
        "failover_time / 2)."))] = None

    def under(self, *, region: str | None, endpoint_url: str | None,
              request_timeout: float | None = None) -> AwsSettings:
        """A part's settings: its own values where it sets them, these where not."""
        return AwsSettings(region=region or self.region, endpoint_url=endpoint_url or self.endpoint_url,
                           profile=self.profile, request_timeout=request_timeout or self.request_timeout)

    def client(self, service: str, *, default_timeout: float = 30.0, max_pool_connections: int = 64) -> AwsClient:
        """A client for ``service`` with these settings (not opened yet); ``default_timeout`` applies when no
        request_timeout is set."""
        return AwsClient(service, endpoint_url=self.endpoint_url, region=self.region, profile=self.profile,
                         timeout=self.request_timeout or default_timeout, max_pool_connections=max_pool_connections)


#: No ``[aws]`` section: every part's unset value comes from the environment, as before it existed.
AWS_DEFAULTS = AwsSettings()


def _session(profile: str | None) -> Any:
    """An aiobotocore session; a named profile missing from the AWS files is a ConfigError."""
    from aiobotocore.session import AioSession
    from botocore.exceptions import ProfileNotFound

    session = AioSession(profile=profile)
    if profile is not None:
        try:
            session.get_scoped_config()
        except ProfileNotFound:
            raise ConfigError(f"AWS profile {profile!r} is not in the AWS config or credentials files: add it "
                              "(`aws configure --profile " + profile + "`) or name another one",
                              field="aws.profile") from None
    return session


def resolve_region(region: str | None, profile: str | None = None) -> str:
    """The configured region, else the environment's, else the profile's, else us-east-1 (emulators
    accept any)."""
    if region:
        return region
    env = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if env:
        return env
    session = _session(profile)  # outside the guard: a profile named but missing must be said
    try:
        configured = session.get_config_variable("region")
    except Exception:  # a broken profile file must not stop a pipeline that names its region
        configured = None
    return str(configured) if configured else DEFAULT_REGION


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ``ClientError``, else None."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code")
        return str(code) if code else None
    return None


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of a botocore ``ClientError``, else None."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status is not None else None
    return None


def retry_kind(exc: BaseException) -> str | None:
    """Why a failure is worth retrying: ``throttled``, ``timeout``, ``connection``, ``server``
    (or a RetryableError's own kind); None when retrying cannot help. Answers are judged by
    their error code and HTTP status, never by message text."""
    from aiohttp import ClientError as AiohttpError
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import ConnectTimeoutError, HTTPClientError, ReadTimeoutError

    if isinstance(exc, RetryableError):
        return exc.kind
    if isinstance(exc, StreamfnError):
        return None
    code = error_code(exc)
    if code is not None:
        status = http_status(exc)
        return RETRYABLE_CODES.get(code) or ("server" if status is not None and status >= 500 else None)
    # Timeouts first: botocore's ConnectTimeoutError is also a ConnectionError, and
    # asyncio.TimeoutError is the builtin TimeoutError, itself an OSError.
    if isinstance(exc, (TimeoutError, ReadTimeoutError, ConnectTimeoutError)):
        return "timeout"
    if isinstance(exc, (BotoConnectionError, HTTPClientError, AiohttpError, OSError)):
        return "connection"
    return None


def is_retryable(exc: BaseException) -> bool:
    """Throttling, timeouts, connection failures and 5xx answers."""
    return retry_kind(exc) is not None


def classify(exc: BaseException, service: str, operation: str, fatal: type[StreamfnError]) -> StreamfnError:
    """``RetryableError`` (with its kind) for transient failures, else ``fatal`` (SourceError, SinkError,
    CheckpointError...). The original exception stays the result's ``__cause__`` when raised ``from``."""
    code = error_code(exc)
    detail = f"{code}: {exc}" if code else repr(exc)
    message = f"{service} {operation} failed: {detail}"
    kind = retry_kind(exc)
    if kind is not None:
        return RetryableError(message, kind=kind)
    return fatal(message)


class AwsClient:
    """One aiobotocore client, opened and closed with the connector that owns it."""

    def __init__(self, service: str, *, endpoint_url: str | None = None, region: str | None = None,
                 profile: str | None = None, timeout: float = 30.0, max_pool_connections: int = 64) -> None:
        self.service = service
        self.endpoint_url = endpoint_url or None
        self.profile = profile or None
        self.region = resolve_region(region, self.profile)
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

        config = AioConfig(
            connect_timeout=min(self.timeout, 10.0),
            read_timeout=self.timeout,
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=self._max_pool,
            s3={"addressing_style": "path"} if self.service == "s3" and self.endpoint_url else None,
        )
        stack = contextlib.AsyncExitStack()
        self._client = await stack.enter_async_context(
            _session(self.profile).create_client(self.service, endpoint_url=self.endpoint_url, region_name=self.region,
                                        config=config)
        )
        if self.service == "s3":
            _send_bodies_without_waiting(self._client)
        self._stack = stack
        return self._client

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack, self._client = self._stack, None, None
            await stack.aclose()

    async def call(self, operation: str, fatal: type[StreamfnError], **kwargs: Any) -> dict[str, Any]:
        """One request that ends within ``timeout`` whatever hangs (connect, send, read); failures
        come back classified: RetryableError with its kind, else ``fatal``."""
        method = getattr(self.client, operation)
        try:
            async with asyncio.timeout(self.timeout):
                result: dict[str, Any] = await method(**kwargs)
        except StreamfnError:
            raise
        except TimeoutError as exc:
            raise RetryableError(f"{self.service} {operation} got no answer within {self.timeout:g}s",
                                 kind="timeout") from exc
        except Exception as exc:
            raise classify(exc, self.service, operation, fatal) from exc
        return result


def _send_bodies_without_waiting(client: Any) -> None:
    """Send S3 upload bodies at once instead of after a ``100 Continue`` answer.

    Botocore asks for ``Expect: 100-continue`` on every S3 upload and, through urllib3, waits at
    most a second for the answer; aiohttp waits for it without any timeout (its read timeout is
    armed only once the body is sent), so a server that accepts the connection and never answers
    held an upload past ``request_timeout``. Without the header, the read timeout covers the wait.
    """
    from botocore.handlers import add_expect_header

    client.meta.events.unregister("before-call.s3", add_expect_header)
