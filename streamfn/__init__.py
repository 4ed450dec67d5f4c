"""streamfn: run your functions over sharded record streams.

A handler author needs only what is exported here: a handler receives a ``Batch`` of
``Record`` objects and a ``Context``, and returns items for the sinks or a ``Result``.
"""

from .handler_api import Context, Result
from .records import Batch, Position, Record

__all__ = ["Batch", "Context", "Position", "Record", "Result"]
__version__ = "0.1.0"
