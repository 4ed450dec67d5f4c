"""The server a connector benchmark runs against: one named by an environment variable, or one
it starts itself from the test harness (``tests/servers.py``); None when neither is possible."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def bench_server(variable: str, starter: str, what: str) -> Iterator[str | None]:
    """``$variable`` if set; else ``tests.servers.<starter>()`` for the run; else None (skipped)."""
    preset = os.environ.get(variable)
    if preset:
        yield preset
        return
    try:
        from tests import servers

        handle = getattr(servers, starter)()
    except Exception as exc:  # not installed here: the harness reports the benchmark as skipped
        print(f"no {what}: {exc}", file=sys.stderr)
        yield None
        return
    try:
        yield handle.endpoint
    finally:
        handle.stop()
