"""Which config ``type`` is which connector: built-in providers and third-party packages alike.

A connector declares its config classes (sources, sinks, checkpoint stores, on-failure
destinations) in a :class:`Connector`. The built-in ones live in
``streamfn/connectors/<provider>/connector.py``; a third-party package exposes its own through an
entry point in the ``streamfn.connectors`` group, e.g. in its ``pyproject.toml``::

    [project.entry-points."streamfn.connectors"]
    mything = "streamfn_mything:CONNECTOR"

Config files are decoded against unions built from this registry when they are loaded, so the
engine never imports a provider and a new provider touches no streamfn file.
"""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points
from typing import TypeVar

import msgspec

from .errors import ConfigError
from .protocols.checkpoint import CheckpointConfig
from .protocols.destination import DestinationConfig
from .protocols.sink import SinkConfig
from .protocols.source import SourceConfig

#: The entry point group third-party connectors register in.
ENTRY_POINT_GROUP = "streamfn.connectors"
#: Built-in providers, each a ``streamfn.connectors.<name>.connector`` module with a ``CONNECTOR``.
BUILT_IN = ("local", "stdout", "kinesis", "dynamodb_streams", "dynamodb", "kafka", "s3", "sqs", "sns", "lease_table")
#: The checkpoint store a pipeline without a ``[checkpoints]`` section uses.
DEFAULT_CHECKPOINTS = "local"


class Connector(msgspec.Struct, frozen=True, kw_only=True):
    """One provider's parts, by the config classes that build them (each class's ``tag`` is its
    ``type`` in pipeline files)."""

    name: str
    sources: tuple[type[SourceConfig], ...] = ()
    sinks: tuple[type[SinkConfig], ...] = ()
    checkpoints: tuple[type[CheckpointConfig], ...] = ()
    destinations: tuple[type[DestinationConfig], ...] = ()


@functools.cache
def connectors() -> tuple[Connector, ...]:
    """Every connector: the built-in ones, then those installed packages register."""
    found = [_built_in(name) for name in BUILT_IN]
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        try:
            connector = point.load()
        except Exception as exc:
            raise ConfigError(f"the connector {point.name!r} ({point.value}, entry point group "
                              f"{ENTRY_POINT_GROUP!r}) failed to import: {exc!r}; fix or uninstall its "
                              "package") from exc
        if not isinstance(connector, Connector):
            raise ConfigError(f"the entry point {point.name!r} ({point.value}) in group {ENTRY_POINT_GROUP!r} "
                              "must name a streamfn.registry.Connector")
        found.append(connector)
    for kind in ("source", "sink", "checkpoint store", "destination"):
        _check_unique(found, kind)
    return tuple(found)


def _parts(connector: Connector) -> dict[str, tuple[type[msgspec.Struct], ...]]:
    return {"source": connector.sources, "sink": connector.sinks, "checkpoint store": connector.checkpoints,
            "destination": connector.destinations}


def _built_in(name: str) -> Connector:
    module = importlib.import_module(f"streamfn.connectors.{name}.connector")
    connector = module.CONNECTOR
    assert isinstance(connector, Connector)
    return connector


def _check_unique(found: list[Connector], kind: str) -> None:
    seen: dict[str, str] = {}
    for connector in found:
        for config in _parts(connector)[kind]:
            tag = type_of(config)
            if tag in seen:
                raise ConfigError(f"two connectors declare a {kind} of type {tag!r} ({seen[tag]} and "
                                  f"{connector.name}): uninstall one")
            seen[tag] = connector.name


def type_of(config: type[msgspec.Struct] | msgspec.Struct) -> str:
    """The ``type`` a config class answers to in pipeline files."""
    tag = config.__struct_config__.tag
    if not isinstance(tag, str):
        raise ConfigError(f"{config.__name__ if isinstance(config, type) else type(config).__name__} declares "
                          "no string tag: give it tag='<type>'")
    return tag


_C = TypeVar("_C", SourceConfig, SinkConfig, CheckpointConfig, DestinationConfig)


def _all(kind: type[_C]) -> tuple[type[_C], ...]:
    found: list[type[_C]] = []
    for connector in connectors():
        name = {SourceConfig: "source", SinkConfig: "sink", CheckpointConfig: "checkpoint store",
                DestinationConfig: "destination"}[kind]
        for part in _parts(connector)[name]:
            if not issubclass(part, kind):
                raise ConfigError(f"the {name} {part.__name__} of connector {connector.name!r} must subclass "
                                  f"streamfn.protocols.{kind.__name__}")
            found.append(part)
    return tuple(found)


def source_configs() -> tuple[type[SourceConfig], ...]:
    return _all(SourceConfig)


def sink_configs() -> tuple[type[SinkConfig], ...]:
    return _all(SinkConfig)


def checkpoint_configs() -> tuple[type[CheckpointConfig], ...]:
    return _all(CheckpointConfig)


def destination_configs() -> tuple[type[DestinationConfig], ...]:
    return _all(DestinationConfig)


def default_checkpoints() -> CheckpointConfig:
    """The checkpoint config a pipeline without a ``[checkpoints]`` section gets."""
    for config in checkpoint_configs():
        if type_of(config) == DEFAULT_CHECKPOINTS:
            return config()
    raise ConfigError(f"no checkpoint store of type {DEFAULT_CHECKPOINTS!r} is registered")
