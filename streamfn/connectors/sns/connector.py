"""The SNS provider: an SNS topic as on-failure destination."""

from ...registry import Connector
from .destination import SnsDestinationConfig

CONNECTOR = Connector(name="sns", destinations=(SnsDestinationConfig,))
