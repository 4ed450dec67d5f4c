"""The Lambda Runtime API (version 2018-06-01) served on 127.0.0.1 to one runtime process.

One server per process incarnation: a killed process's connections can never answer for the next
one. The runtime long-polls ``GET /runtime/invocation/next``; the engine hands it one invocation at
a time (:meth:`RuntimeApi.invoke`) and gets back the body the runtime posted to ``.../response``,
or the error it posted to ``.../error`` or ``/runtime/init/error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Mapping

import orjson
from aiohttp import web

PREFIX = "/2018-06-01/runtime"
#: Lambda's limit on a synchronous invocation's response (and on an error document).
MAX_RESPONSE_BYTES = 6 * 1024 * 1024
_INVOCATION = re.compile(rf"^{PREFIX}/invocation/(?P<id>[^/]+)/(?P<kind>response|error)$")


class InvocationError(Exception):
    """What the runtime posted to ``.../error`` or ``/runtime/init/error``."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}" if message else error_type)
        self.error_type = error_type
        self.message = message


class RuntimeApi:
    """The invocations of one runtime process: at most one handed out and unanswered at a time."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        #: Done when the runtime first asks for an invocation: its init phase is over.
        self.ready: asyncio.Future[None] = loop.create_future()
        #: Gets the runtime's init error, if it reports one.
        self.init_error: asyncio.Future[InvocationError] = loop.create_future()
        self._queued: tuple[str, bytes, Mapping[str, str]] | None = None
        self._poll: asyncio.Future[tuple[str, bytes, Mapping[str, str]]] | None = None
        self._answers: dict[str, asyncio.Future[bytes]] = {}
        self._server: asyncio.Server | None = None
        self.address = ""

    async def start(self) -> str:
        """Listen on a free port of 127.0.0.1; returns ``host:port`` for ``AWS_LAMBDA_RUNTIME_API``."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(web.Server(self._handle, access_log=None), "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = f"{host}:{port}"
        return self.address

    def invoke(self, request_id: str, body: bytes, headers: Mapping[str, str]) -> asyncio.Future[bytes]:
        """Hand one invocation to the runtime; the future gets the body it posts as the response, or
        an InvocationError. Fail it with :meth:`abort` when the process dies first."""
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._answers[request_id] = answer
        poll = self._poll
        if poll is not None and not poll.done():
            self._poll = None
            poll.set_result((request_id, body, headers))
        else:
            self._queued = (request_id, body, headers)
        return answer

    def forget(self, request_id: str) -> None:
        """The engine gave up on this invocation: a late answer is refused."""
        self._answers.pop(request_id, None)
        if self._queued is not None and self._queued[0] == request_id:
            self._queued = None

    def abort(self, error: BaseException) -> None:
        """The process is gone: every pending answer fails with ``error``; stop listening."""
        for answer in self._answers.values():
            if not answer.done():
                answer.set_exception(error)
        self._answers.clear()
        self._queued = None
        if self._poll is not None and not self._poll.done():
            self._poll.cancel()
        for future in (self.init_error, self.ready):
            if not future.done():
                future.cancel()
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if request.method == "GET" and path == f"{PREFIX}/invocation/next":
            return await self._next()
        if request.method != "POST":
            return _error(405, "MethodNotAllowed", f"{request.method} {path}")
        match = _INVOCATION.match(path)
        if match is None and path != f"{PREFIX}/init/error":
            return _error(404, "NotFound", f"no such resource: {path}")
        if request.content_length is not None and request.content_length > MAX_RESPONSE_BYTES:
            return _error(413, "RequestEntityTooLarge", f"a response may hold at most {MAX_RESPONSE_BYTES} bytes")
        body = await request.content.read()
        if len(body) > MAX_RESPONSE_BYTES:
            return _error(413, "RequestEntityTooLarge", f"a response may hold at most {MAX_RESPONSE_BYTES} bytes")
        if match is None:
            if not self.init_error.done():
                self.init_error.set_result(_posted_error(request, body, "Runtime.InitError"))
            return _accepted()
        answer = self._answers.pop(match.group("id"), None)
        if answer is None or answer.done():
            return _error(400, "InvalidRequestID", f"no invocation {match.group('id')!r} is waiting for an answer")
        if match.group("kind") == "response":
            answer.set_result(body)
        else:
            answer.set_exception(_posted_error(request, body, "Runtime.Unknown"))
        return _accepted()

    async def _next(self) -> web.StreamResponse:
        if not self.ready.done():
            self.ready.set_result(None)
        queued = self._queued
        if queued is not None:
            self._queued = None
        else:
            if self._poll is not None and not self._poll.done():
                return _error(400, "InvalidStateTransition", "another request already waits for the next invocation")
            self._poll = asyncio.get_running_loop().create_future()
            try:
                queued = await self._poll
            except asyncio.CancelledError:
                return _error(500, "ServiceUnavailable", "the runtime is being stopped")
        request_id, body, headers = queued
        if request_id not in self._answers:  # given up on while it was queued
            return await self._next()
        return web.Response(body=body, headers=headers)


def _posted_error(request: web.BaseRequest, body: bytes, default_type: str) -> InvocationError:
    """The error document a runtime posts (``errorType``, ``errorMessage``), whatever its shape. The
    document's type (``ZeroDivisionError``) says more than the header's (often ``Unhandled``)."""
    error_type = request.headers.get("Lambda-Runtime-Function-Error-Type", "")
    message = body.decode("utf-8", "replace")
    with contextlib.suppress(orjson.JSONDecodeError):
        document = orjson.loads(body)
        if isinstance(document, dict):
            error_type = str(document.get("errorType") or "") or error_type
            message = str(document.get("errorMessage") or "")
    return InvocationError(error_type or default_type, message)


def _accepted() -> web.Response:
    return web.Response(status=202, body=b'{"status":"OK"}', content_type="application/json")


def _error(status: int, error_type: str, message: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"errorType": error_type, "errorMessage": message}),
                        content_type="application/json")
