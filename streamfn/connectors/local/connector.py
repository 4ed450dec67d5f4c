"""The local provider's parts: the embedded log as source and failure stream, files as sink and destination."""

from ...registry import Connector
from .destination import LocalDestinationConfig
from .log_destination import LocalLogDestinationConfig
from .sink import LocalSinkConfig
from .source import LocalSourceConfig
from .store import LocalCheckpointStoreConfig

CONNECTOR = Connector(name="local", sources=(LocalSourceConfig,), sinks=(LocalSinkConfig,),
                      checkpoints=(LocalCheckpointStoreConfig,),
                      destinations=(LocalDestinationConfig, LocalLogDestinationConfig))
