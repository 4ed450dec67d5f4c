"""streamfn: run your functions over sharded record streams.

A handler author needs only ``Batch``, ``Record``, ``Context`` and ``Result``: a handler receives a
``Batch`` of ``Record`` objects and a ``Context``, and returns items for the sinks or a ``Result``.
A program that embeds the engine uses ``pipeline``, ``Engine`` and ``append_records`` (see
``streamfn.api``), imported on first use so that handler modules stay light to import.
"""

from typing import TYPE_CHECKING, Any

from .handler_api import Context, Result
from .records import Batch, Position, Record

if TYPE_CHECKING:
    from .api import Engine, append_records, pipeline

__all__ = ["Batch", "Context", "Engine", "Position", "Record", "Result", "append_records", "pipeline"]
from .version import __version__ as __version__

_EMBEDDING = frozenset({"Engine", "append_records", "pipeline"})


def __getattr__(name: str) -> Any:
    if name in _EMBEDDING:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'streamfn' has no attribute {name!r}")
