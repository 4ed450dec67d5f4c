"""The DynamoDB provider: a table as sink."""

from ...registry import Connector
from .sink import DynamoDBSinkConfig

CONNECTOR = Connector(name="dynamodb", sinks=(DynamoDBSinkConfig,))
