"""The lease table provider: checkpoints and shard leases in a DynamoDB table (KCL's layout)."""

from ...registry import Connector
from .store import DynamoDBCheckpointStoreConfig

CONNECTOR = Connector(name="lease_table", checkpoints=(DynamoDBCheckpointStoreConfig,))
