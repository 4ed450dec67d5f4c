"""The stdout provider: NDJSON on standard output."""

from ...registry import Connector
from .sink import StdoutSinkConfig

CONNECTOR = Connector(name="stdout", sinks=(StdoutSinkConfig,))
