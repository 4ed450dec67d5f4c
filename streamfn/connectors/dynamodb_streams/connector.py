"""The DynamoDB Streams provider: a table's stream as source."""

from ...registry import Connector
from .source import DynamoDBStreamsSourceConfig

CONNECTOR = Connector(name="dynamodb_streams", sources=(DynamoDBStreamsSourceConfig,))
