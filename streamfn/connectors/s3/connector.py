"""The S3 provider: a bucket as sink and as on-failure destination."""

from ...registry import Connector
from .destination import S3DestinationConfig
from .sink import S3SinkConfig

CONNECTOR = Connector(name="s3", sinks=(S3SinkConfig,), destinations=(S3DestinationConfig,))
