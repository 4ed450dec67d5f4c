"""What the operator verbs build from a pipeline file: its source, its checkpoint store, moments in time."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import msgspec

from .. import registry
from ..config import LoadedPipeline
from ..connectors.local.source import LocalSourceConfig
from ..engine.pipeline import build_checkpoint_store
from ..errors import ConfigError
from ..protocols.checkpoint import CheckpointStore
from ..protocols.source import Source


def build_source(loaded: LoadedPipeline) -> Source:
    """The pipeline's source, not yet opened."""
    return loaded.config.source.build(loaded.context)


def build_store(loaded: LoadedPipeline, source: Source | None) -> CheckpointStore:
    """The checkpoint store the daemon would use (``source`` None: a store that needs none)."""
    if source is None:
        return (loaded.config.checkpoints or registry.default_checkpoints()).build(loaded.context)
    return build_checkpoint_store(loaded, source)


def source_kind(config: msgspec.Struct) -> str:
    """The ``type`` tag of a component config (``local``, ``kinesis``, ``kafka``...)."""
    return registry.type_of(config)


def local_log_path(loaded: LoadedPipeline) -> Path | None:
    """The local log file of a pipeline on the embedded log (None for any other source)."""
    source = loaded.config.source
    return source.log_path(loaded.context) if isinstance(source, LocalSourceConfig) else None


def parse_moment(text: str) -> float:
    """Epoch seconds from ``1732790000(.5)`` or ISO 8601 (``2026-11-28T12:00:00Z``; naive means UTC)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"not a time: {text!r} (use epoch seconds or ISO 8601, e.g. 2026-11-28T12:00:00Z)"
                          ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def local_store_path(loaded: LoadedPipeline) -> Path | None:
    """The local checkpoint file the daemon would use, None when checkpoints live elsewhere
    (DynamoDB, or a Kafka group that keeps its own)."""
    from ..connectors.local.store import LocalCheckpointStoreConfig

    configured = loaded.config.checkpoints
    if configured is None and loaded.config.source.own_checkpoints is not None:
        return None
    if configured is None or isinstance(configured, LocalCheckpointStoreConfig):
        path = configured.path if configured is not None else None
        return loaded.context.resolve(path) if path else loaded.context.state_dir / "checkpoints.sqlite3"
    return None
