"""A TCP proxy on 127.0.0.1 that can make its upstream hang or refuse connections, for outage tests.

Between streamfn and a test server (moto), it passes bytes both ways until told otherwise:

- ``hang()``: connections are still accepted but nothing is forwarded in either direction (a
  black hole: the client waits for an answer that never comes);
- ``refuse()``: the listening socket closes and open connections are cut, so connects fail with
  ECONNREFUSED;
- ``restore()``: forwarding resumes on the same port; connections that lived through the outage
  are cut (their bytes were dropped, so they cannot carry a valid request any more).

    async with OutageProxy(moto_endpoint) as proxy:
        ... streamfn with endpoint_url=proxy.endpoint ...
        proxy.hang(); await asyncio.sleep(10); await proxy.restore()
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from types import TracebackType
from urllib.parse import urlsplit

CHUNK = 64 * 1024


class Mode(enum.Enum):
    PASS = "pass"
    HANG = "hang"
    REFUSE = "refuse"


class _Link:
    """One client connection and, while forwarding, its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.stalled = False

    def cut(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()


class OutageProxy:
    """Forwards 127.0.0.1:<port> to ``upstream`` (``http://host:port``), with outages on demand."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"upstream needs a host and a port: {upstream!r}")
        self._upstream = (parts.hostname, parts.port)
        self.port = 0
        self.mode = Mode.PASS
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> str:
        await self._listen()
        return self.endpoint

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def hang(self) -> None:
        """Accept but forward nothing: every open and new connection goes silent."""
        self.mode = Mode.HANG
        for link in self._links:
            link.stalled = True

    async def refuse(self) -> None:
        """Stop listening and cut every connection: connects are refused until ``restore``."""
        self.mode = Mode.REFUSE
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for link in list(self._links):
            link.cut()

    async def restore(self) -> None:
        """Forward again on the same port; connections stalled by a hang are cut."""
        for link in list(self._links):
            if link.stalled:
                link.cut()
        self.mode = Mode.PASS
        if self._server is None:
            await self._listen()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for link in list(self._links):
            link.cut()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> OutageProxy:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(writer)
        self._links.add(link)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self.mode is not Mode.PASS:
                link.stalled = True
                await self._drop(reader)
                return
            up_reader, link.upstream = await asyncio.open_connection(*self._upstream)
            await asyncio.gather(self._pipe(reader, link.upstream, link), self._pipe(up_reader, writer, link))
        except OSError:
            pass
        finally:
            self._links.discard(link)
            self._tasks.discard(task)
            link.cut()

    @staticmethod
    async def _drop(reader: asyncio.StreamReader) -> None:
        while await reader.read(CHUNK):
            pass

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link) -> None:
        try:
            while chunk := await reader.read(CHUNK):
                if link.stalled:
                    continue
                writer.write(chunk)
                await writer.drain()
        finally:
            with contextlib.suppress(OSError):
                if writer.can_write_eof() and not link.stalled:
                    writer.write_eof()
