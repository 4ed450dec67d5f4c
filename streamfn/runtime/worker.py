"""The worker process of ``isolation = "process"``: a Runtime API client that calls a Python handler.

``python -m streamfn.runtime.worker module:function [--search-dir DIR]...`` imports the handler (an
import error is posted to ``/runtime/init/error``), then loops: take the next invocation (msgpack,
see :mod:`streamfn.runtime.wire`), call the handler, post its answer or its error. It never stops
by itself: the engine kills it.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import inspect
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from ..engine.invoke import load_handler
from ..errors import HandlerLoadError
from . import wire

PREFIX = "/2018-06-01/runtime"


class RuntimeClient:
    """The three requests a runtime makes, on one kept-alive connection."""

    def __init__(self, address: str) -> None:
        self._connection = http.client.HTTPConnection(address, timeout=None)

    def next(self) -> tuple[str, bytes]:
        self._connection.request("GET", f"{PREFIX}/invocation/next")
        response = self._connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise SystemExit(f"the runtime API refused the next invocation: {response.status} {body!r}")
        return response.headers["Lambda-Runtime-Aws-Request-Id"], body

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self._connection.request("POST", f"{PREFIX}/{path}", body=body, headers=headers or {})
        response = self._connection.getresponse()
        response.read()

    def post_error(self, path: str, exc: BaseException) -> None:
        error_type = type(exc).__name__
        document = {"errorMessage": str(exc), "errorType": error_type,
                    "stackTrace": traceback.format_exception(exc)}
        self.post(path, orjson.dumps(document, default=repr), {"Lambda-Runtime-Function-Error-Type": error_type})


def serve(client: RuntimeClient, handler: Callable[..., Any]) -> None:
    """Call ``handler`` on every invocation, forever."""
    is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None))  # noqa: B004 - callable objects with async __call__
    loop = asyncio.new_event_loop() if is_async else None
    while True:
        request_id, body = client.next()
        try:
            invocation = wire.invocation_decoder.decode(body)
            answer = handler(invocation.payload(), invocation.context(request_id))
            if loop is not None:
                answer = loop.run_until_complete(answer)
        except BaseException as exc:  # SystemExit too: the batch fails, the worker goes on
            client.post_error(f"invocation/{request_id}/error", exc)
            continue
        try:
            encoded = wire.encoder.encode(wire.answer_of(answer))
        except (TypeError, ValueError, OverflowError) as exc:
            client.post_error(f"invocation/{request_id}/error", TypeError(
                f"handler returned something that cannot be sent back to streamfn (use JSON-like values): {exc}"))
            continue
        client.post(f"invocation/{request_id}/response", encoded, {"Content-Type": wire.CONTENT_TYPE})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamfn.runtime.worker")
    parser.add_argument("handler")
    parser.add_argument("--search-dir", action="append", default=[])
    args = parser.parse_args(argv)
    client = RuntimeClient(os.environ["AWS_LAMBDA_RUNTIME_API"])
    try:
        handler = load_handler(args.handler, [Path(d) for d in args.search_dir])
    except HandlerLoadError as exc:
        client.post_error("init/error", exc)
        print(exc, file=sys.stderr)
        return 1
    serve(client, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
