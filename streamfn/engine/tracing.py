"""Optional OpenTelemetry traces: one span per batch, with child spans for its read, each handler
call (``invoke``), the sink write and the checkpoint, all carrying pipeline, shard and batch bounds.

Off unless :func:`enable` was called (``streamfn run --traces``, or an embedding program); while
off, every hook is one global test returning a shared no-op context manager, and the
``opentelemetry`` packages (``streamfn[otel]``) are never imported. Spans go to the tracer provider
given, else to the global one; ``--traces`` sets up an SDK provider exporting over OTLP/HTTP (the
standard ``OTEL_EXPORTER_OTLP_*`` and ``OTEL_SERVICE_NAME`` variables apply) unless the program
already installed one (``opentelemetry-instrument``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..version import __version__

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer, TracerProvider

    from ..records import Record

_tracer: Tracer | None = None
#: The provider ``configure_from_environment`` made (flushed and shut down by :func:`shutdown`).
_owned_provider: Any = None


class _Nothing:
    """The context manager of every hook while tracing is off (cheaper than ``nullcontext``)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NULL: AbstractContextManager[None] = _Nothing()
#: The attributes of the batch being handled in this task: child spans carry them too.
_batch_attributes: ContextVar[dict[str, Any] | None] = ContextVar("streamfn_batch_attributes", default=None)

PREFIX = "streamfn."


def enabled() -> bool:
    return _tracer is not None


def enable(provider: TracerProvider | None = None) -> None:
    """Trace batches from now on, to ``provider`` (default: the global tracer provider)."""
    global _tracer
    try:
        from opentelemetry import trace
    except ImportError:
        raise ConfigError("traces need OpenTelemetry: pip install 'streamfn[otel]'", field="--traces") from None
    _tracer = (provider or trace.get_tracer_provider()).get_tracer("streamfn", __version__)


def disable() -> None:
    global _tracer
    _tracer = None


def configure_from_environment() -> None:
    """``--traces``: the program's provider if it has an SDK one, else an SDK provider exporting over
    OTLP/HTTP, configured by the standard ``OTEL_*`` environment variables."""
    global _owned_provider
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise ConfigError("traces need OpenTelemetry: pip install 'streamfn[otel]'", field="--traces") from None
    current = trace.get_tracer_provider()
    if isinstance(current, SdkTracerProvider):
        enable(current)
        return
    named = "OTEL_SERVICE_NAME" in os.environ or "service.name=" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    provider = SdkTracerProvider(resource=Resource.create({} if named else {"service.name": "streamfn"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _owned_provider = provider
    enable(provider)


def shutdown() -> None:
    """Export what is buffered and stop (a provider streamfn made only)."""
    global _owned_provider
    provider, _owned_provider = _owned_provider, None
    if provider is not None:
        provider.shutdown()
    disable()


def attributes(pipeline: str, shard_id: str, records: Sequence[Record]) -> dict[str, Any]:
    return {f"{PREFIX}pipeline": pipeline, f"{PREFIX}shard": shard_id, f"{PREFIX}records": len(records),
            f"{PREFIX}first_sequence": records[0].identifier, f"{PREFIX}last_sequence": records[-1].identifier}


def batch(pipeline: str, shard_id: str, records: Sequence[Record], read_started_ns: int) -> AbstractContextManager[Any]:
    """The span of one batch, from the start of the read that formed it to its checkpoint."""
    if _tracer is None or not records:
        return _NULL
    return _batch(_tracer, attributes(pipeline, shard_id, records), read_started_ns)


@contextlib.contextmanager
def _batch(tracer: Tracer, attrs: dict[str, Any], read_started_ns: int) -> Iterator[Any]:
    formed = time.time_ns()
    started = read_started_ns or formed
    token = _batch_attributes.set(attrs)
    try:
        with tracer.start_as_current_span("batch", start_time=started, attributes=attrs) as span:
            tracer.start_span("read", start_time=started, attributes=attrs).end(end_time=formed)
            yield span
    finally:
        _batch_attributes.reset(token)


def span(name: str, extra: Mapping[str, Any] | None = None) -> AbstractContextManager[Any]:
    """A child span of the current batch (no span outside one), with the batch's attributes and
    ``extra`` (None values left out)."""
    if _tracer is None:
        return _NULL
    attrs = _batch_attributes.get()
    if attrs is None:
        return _NULL
    if extra:
        attrs = dict(attrs)
        attrs.update((f"{PREFIX}{key}", value) for key, value in extra.items() if value is not None)
    return _tracer.start_as_current_span(name, attributes=attrs)
