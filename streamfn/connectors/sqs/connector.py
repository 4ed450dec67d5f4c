"""The SQS provider: an SQS queue as on-failure destination."""

from ...registry import Connector
from .destination import SqsDestinationConfig

CONNECTOR = Connector(name="sqs", destinations=(SqsDestinationConfig,))
