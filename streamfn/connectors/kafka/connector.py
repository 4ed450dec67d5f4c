"""The Kafka provider: a topic read by a consumer group, its committed offsets, a failure topic."""

from ...registry import Connector
from .destination import KafkaDestinationConfig
from .offsets import KafkaCheckpointStoreConfig
from .source import KafkaSourceConfig

CONNECTOR = Connector(name="kafka", sources=(KafkaSourceConfig,), checkpoints=(KafkaCheckpointStoreConfig,),
                      destinations=(KafkaDestinationConfig,))
