"""One handler process: started in its own process group, its output logged line by line, killed whole.

No orphans: the process is killed (its whole group) when its lane ends or the pipeline stops, and
the kernel kills it if streamfn itself dies (``PR_SET_PDEATHSIG``), even by ``kill -9``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import resource
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

log = logging.getLogger("streamfn.handler")

#: Longest line of handler output logged as one record; longer ones are split.
MAX_LINE = 64 * 1024
_PR_SET_PDEATHSIG = 1


#: libc, loaded before any fork (a child should not load libraries between fork and exec).
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _child_setup(memory_limit_mb: int) -> Callable[[], None]:
    """What runs in the child between fork and exec: die with the parent, cap the address space."""
    parent = os.getpid()

    def setup() -> None:
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:  # the parent died before the line above: no signal will come
                os._exit(1)
        if memory_limit_mb > 0:
            limit = memory_limit_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return setup


class HandlerProcess:
    """A started process; :attr:`exited` gets its exit code (negative: the signal that ended it)."""

    def __init__(self, proc: asyncio.subprocess.Process, fields: dict[str, object]) -> None:
        self._proc = proc
        self.pid = proc.pid
        #: Logged with every line of output; ``request_id`` is the invocation running now.
        self.fields = fields
        self.killed = False
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pumps = [asyncio.create_task(self._pump(stream, name))
                       for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr")) if stream is not None]
        self._waiter = asyncio.create_task(self._wait())

    @classmethod
    async def start(cls, command: Sequence[str], *, env: Mapping[str, str], cwd: Path, memory_limit_mb: int,
                    fields: dict[str, object]) -> HandlerProcess:
        """Start ``command``; OSError if it cannot be executed (not found, not executable)."""
        proc = await asyncio.create_subprocess_exec(
            *command, env=dict(env), cwd=cwd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True, preexec_fn=_child_setup(memory_limit_mb),
            limit=MAX_LINE,
        )
        return cls(proc, fields)

    @property
    def running(self) -> bool:
        return not self.exited.done()

    def kill(self) -> None:
        """SIGKILL the process and everything it started in its group (a shell's ``curl``); the caller
        awaits :attr:`exited` to know it is gone."""
        self.killed = True
        if self.exited.done():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()

    async def _wait(self) -> None:
        code = await self._proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # what the process left running in its group goes with it
        await asyncio.gather(*self._pumps, return_exceptions=True)
        if not self.exited.done():
            self.exited.set_result(code)

    async def _pump(self, stream: asyncio.StreamReader, name: str) -> None:
        """Each line the process writes becomes a log record with pipeline, shard and request id."""
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line longer than MAX_LINE: log what is there, go on
                line = await stream.read(MAX_LINE)
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            fields = {key: value for key, value in self.fields.items() if value is not None}
            log.info(text, extra={**fields, "stream": name, "pid": self.pid})
