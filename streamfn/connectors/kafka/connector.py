"""The Kafka provider: a topic read by a consumer group, its committed offsets, a failure topic."""

from ...registry import Connector
from .destination import KafkaDestinationConfig
from .source import KafkaSourceConfig
from .store import KafkaCheckpointStoreConfig

CONNECTOR = Connector(name="kafka", sources=(KafkaSourceConfig,), checkpoints=(KafkaCheckpointStoreConfig,),
                      destinations=(KafkaDestinationConfig,))
