"""A fault-injecting reverse proxy on 127.0.0.1 in front of an AWS-compatible server, for throttling tests.

The emulators never throttle, so tests that check backoff put this proxy between the client and the
server and tell it to answer the next N requests for one X-Amz-Target (e.g. `Kinesis_20131202.GetRecords`)
with the error AWS would send (requests without a target, as S3's, get it as an XML body with ANY).
Everything else passes through untouched.

    async with ThrottleProxy(kinesis_endpoint) as proxy:
        proxy.inject("Kinesis_20131202.GetRecords", count=3)
        ... client(endpoint_url=proxy.endpoint) ...
        assert proxy.injected["Kinesis_20131202.GetRecords"] == 3

Botocore retries throttles itself (legacy mode: 4 retries, DynamoDB 9): count with that in mind or
build the client with `Config(retries={"total_max_attempts": 1})`. Streaming responses (SubscribeToShard)
are buffered, so do not proxy them.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass
from types import TracebackType

from aiohttp import ClientSession, ClientTimeout, web
from multidict import CIMultiDict

THROTTLE = "ProvisionedThroughputExceededException"
# Error codes AWS JSON services send with these statuses when none is given.
DEFAULT_ERROR_TYPE = {400: THROTTLE, 500: "InternalFailure", 503: "ServiceUnavailable"}
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)
ANY = "*"


@dataclass
class Fault:
    """Answer the next `remaining` requests whose X-Amz-Target equals `target` ("*" = any) with an error."""

    target: str
    remaining: int
    status: int
    error_type: str
    message: str


class ThrottleProxy:
    """Reverse proxy to `upstream` that injects AWS-shaped errors on demand and counts them."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.endpoint = ""
        self.faults: list[Fault] = []
        self.injected: Counter[str] = Counter()
        self.passed: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    def inject(
        self,
        target: str,
        count: int = 1,
        *,
        status: int = 400,
        error_type: str | None = None,
        message: str = "Rate exceeded for shard (injected by ThrottleProxy)",
    ) -> None:
        """Fail the next `count` requests for `target` with `status` and an AWS JSON error body."""
        if count < 1:
            raise ValueError("count must be at least 1")
        kind = error_type or DEFAULT_ERROR_TYPE.get(status, "InternalFailure")
        if kind == "InternalFailure" and target.startswith("DynamoDB"):
            kind = "InternalServerError"  # DynamoDB's name for its 500
        self.faults.append(Fault(target, count, status, kind, message))

    def pending(self) -> int:
        """How many injected errors are still waiting for a matching request."""
        return sum(fault.remaining for fault in self.faults)

    async def start(self) -> str:
        self._session = ClientSession(auto_decompress=False, timeout=ClientTimeout(total=120))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = int(self._runner.addresses[0][1])
        self.endpoint = f"http://127.0.0.1:{port}"
        return self.endpoint

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> ThrottleProxy:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _take_fault(self, target: str) -> Fault | None:
        for fault in self.faults:
            if fault.remaining > 0 and fault.target in (target, ANY):
                fault.remaining -= 1
                return fault
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        target = request.headers.get("X-Amz-Target", "")
        body = await request.read()
        fault = self._take_fault(target)
        if fault is not None:
            self.injected[target] += 1
            if not target:  # a REST-XML service (S3): the code goes in an XML body
                xml = f"<Error><Code>{fault.error_type}</Code><Message>{fault.message}</Message></Error>"
                return web.Response(status=fault.status, body=xml.encode(), content_type="application/xml")
            content_type = request.headers.get("Content-Type", "application/x-amz-json-1.1")
            payload = json.dumps({"__type": fault.error_type, "message": fault.message}).encode()
            return web.Response(
                status=fault.status,
                body=payload,
                headers={
                    "Content-Type": content_type,
                    "x-amzn-RequestId": str(uuid.uuid4()),
                    "x-amzn-ErrorType": fault.error_type,
                },
            )
        self.passed[target] += 1
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as upstream:
            content = await upstream.read()
            out_headers = CIMultiDict((k, v) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP)
            return web.Response(status=upstream.status, body=content, headers=out_headers)
