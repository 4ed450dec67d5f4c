"""The Kinesis provider: a data stream as source and as on-failure destination."""

from ...registry import Connector
from .destination import KinesisDestinationConfig
from .source import KinesisSourceConfig

CONNECTOR = Connector(name="kinesis", sources=(KinesisSourceConfig,), destinations=(KinesisDestinationConfig,))
