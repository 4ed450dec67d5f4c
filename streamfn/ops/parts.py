"""What the operator verbs build from a pipeline file: its source, its checkpoint store, moments in time."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..config import LoadedPipeline
from ..errors import ConfigError
from ..protocols.checkpoint import CheckpointStore


def build_source(loaded: LoadedPipeline) -> Any:
    """The pipeline's source, not yet opened."""
    return loaded.config.source.build(loaded.context)


def build_store(loaded: LoadedPipeline, source: Any) -> CheckpointStore:
    """The checkpoint store the daemon would use."""
    from ..engine.pipeline import build_checkpoint_store

    return build_checkpoint_store(loaded, source)


def source_kind(config: Any) -> str | None:
    """The ``type`` tag of a component config (``local``, ``kinesis``, ``kafka``...)."""
    struct_config = getattr(config, "__struct_config__", None)
    tag = getattr(struct_config, "tag", None)
    return tag if isinstance(tag, str) else None


def local_log_path(loaded: LoadedPipeline) -> Path | None:
    """The local log file of a pipeline on the embedded log (None for any other source)."""
    source = loaded.config.source
    if source_kind(source) != "local":
        return None
    path = getattr(source, "path", None)
    ctx = loaded.context
    return ctx.resolve(path) if path else ctx.state_dir / "log.sqlite3"


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
    if configured is None and source_kind(loaded.config.source) == "kafka":
        return None
    if configured is None or isinstance(configured, LocalCheckpointStoreConfig):
        path = configured.path if configured is not None else None
        return loaded.context.resolve(path) if path else loaded.context.state_dir / "checkpoints.sqlite3"
    return None
