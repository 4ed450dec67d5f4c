"""Which optional extras (``pip install 'streamfn[aws]'``...) a pipeline file needs, checked before any verb uses them.

A connector imports its client library only when it is built, so a missing extra would otherwise
surface mid-run as a bare ModuleNotFoundError (or not at all in ``validate``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .connectors.dynamodb.sink import DynamoDBSinkConfig
from .connectors.dynamodb_streams.source import DynamoDBStreamsSourceConfig
from .connectors.kafka.destination import KafkaDestinationConfig
from .connectors.kafka.offsets import KafkaCheckpointStoreConfig
from .connectors.kafka.source import KafkaSourceConfig
from .connectors.kinesis.destination import KinesisDestinationConfig
from .connectors.kinesis.source import KinesisSourceConfig
from .connectors.lease_table.store import DynamoDBCheckpointStoreConfig
from .connectors.s3.destination import S3DestinationConfig
from .connectors.s3.sink import S3SinkConfig
from .errors import ConfigError

if TYPE_CHECKING:
    from .config import LoadedPipeline

#: The module each extra installs that streamfn imports first (importing it pulls in the rest).
EXTRA_MODULES: dict[str, str] = {"aws": "aiobotocore.session", "kafka": "aiokafka", "metrics": "prometheus_client",
                                  "runtime": "aiohttp"}
#: Top-level packages of each extra, to name the extra when one of them is missing at run time.
_PACKAGES: dict[str, str] = {"aiobotocore": "aws", "botocore": "aws", "aiokafka": "kafka",
                             "prometheus_client": "metrics", "aiohttp": "runtime", "opentelemetry": "otel"}
#: Component config types by the extra they need.
_AWS = (KinesisSourceConfig, DynamoDBStreamsSourceConfig, S3SinkConfig, DynamoDBSinkConfig,
        DynamoDBCheckpointStoreConfig, S3DestinationConfig, KinesisDestinationConfig)
_KAFKA = (KafkaSourceConfig, KafkaCheckpointStoreConfig, KafkaDestinationConfig)


def install_hint(extra: str) -> str:
    return f"pip install 'streamfn[{extra}]'"


def extra_of_module(name: str | None) -> str | None:
    """The extra that provides module ``name`` (``"botocore.exceptions"`` -> ``"aws"``), if any."""
    return _PACKAGES.get((name or "").split(".", 1)[0])


def required_extras(loaded: LoadedPipeline, *, metrics: bool = False) -> dict[str, str]:
    """Each extra the pipeline needs, with the first field that needs it; ``metrics``: the file's
    ``[metrics]`` endpoint will be served (``run`` and ``validate``)."""
    config = loaded.config
    components: list[tuple[str, object]] = [("source", config.source)]
    components += [(f"sinks[{index}]", sink) for index, sink in enumerate(config.sinks)]
    components += [("checkpoints", config.checkpoints), ("on_failure", config.on_failure)]
    needed: dict[str, str] = {}
    for field, component in components:
        extra = "aws" if isinstance(component, _AWS) else "kafka" if isinstance(component, _KAFKA) else None
        if extra is not None:
            needed.setdefault(extra, f"{field}.type")
    if config.interface == "runtime-api" or config.isolation == "process":  # the Runtime API server
        needed.setdefault("runtime", "interface" if config.interface == "runtime-api" else "isolation")
    if metrics and config.metrics is not None and config.metrics.enabled:
        needed.setdefault("metrics", "metrics.enabled")
    return needed


def missing(extra: str) -> ImportError | None:
    """The import error of the extra's client library, or None when it imports."""
    try:
        importlib.import_module(EXTRA_MODULES[extra])
    except ImportError as exc:
        return exc
    return None


def check_extras(loaded: LoadedPipeline, *, metrics: bool = False) -> None:
    """Refuse a pipeline whose connectors need an extra that is not installed, naming file, field and fix."""
    for extra, field in required_extras(loaded, metrics=metrics).items():
        error = missing(extra)
        if error is not None:
            raise ConfigError(f"needs the {extra!r} extra, which is not installed ({error}): {install_hint(extra)}",
                              file=str(loaded.path), field=field)
