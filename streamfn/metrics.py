"""Prometheus metrics read from every shard's ShardStats at scrape time, plus the ops HTTP server.

Nothing here runs on the record path: the engine bumps plain counters once per batch and the
collector turns them into series only when ``/metrics`` is scraped. ``prometheus-client`` is an
optional extra (``streamfn[metrics]``) and is imported only when the endpoint is turned on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import msgspec

from .engine.stats import DONE_BUCKETS, HANDLER_BUCKETS, ShardStats
from .errors import ConfigError
from .version import __version__
from .versions import ACTIVE_VERSIONS

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from .protocols.assignment import Assigner
    from .protocols.checkpoint import CheckpointStore

log = logging.getLogger("streamfn.metrics")


class MetricsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``[metrics]`` section: an HTTP endpoint with /metrics, /healthz and /readyz (off by default)."""

    enabled: Annotated[bool, msgspec.Meta(description=(
        "Serve /metrics, /healthz and /readyz while the pipelines run."))] = False
    host: Annotated[str, msgspec.Meta(description=(
        "Address to listen on; `0.0.0.0` to be scraped from outside the host or pod."))] = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(description="TCP port (0 picks a free one, for tests).")] = 9464
    ready_max_blocked_seconds: Annotated[float, msgspec.Meta(description=(
        "/readyz fails once any shard has been retrying the same records for longer than this."))] = 300.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535")
        if self.ready_max_blocked_seconds <= 0:
            raise ValueError("ready_max_blocked_seconds must be positive")


class Metric(StrEnum):
    """Every series name streamfn exports (counters without their ``_total`` suffix)."""

    BUILD_INFO = "streamfn_build_info"
    RECORDS_READ = "streamfn_records_read"
    RECORDS_FILTERED = "streamfn_records_filtered"
    RECORDS_HANDLED = "streamfn_records_handled"
    RECORDS_FAILED = "streamfn_records_failed"
    RECORDS_SENT_TO_DESTINATION = "streamfn_records_sent_to_destination"
    BATCHES = "streamfn_batches"
    RETRIES = "streamfn_retries"
    HANDLER_DURATION = "streamfn_handler_duration_seconds"
    SINK_WRITE_SECONDS = "streamfn_sink_write_seconds"
    ATTEMPT = "streamfn_attempt"
    ITERATOR_AGE = "streamfn_iterator_age_seconds"
    CHECKPOINT_LAG = "streamfn_checkpoint_lag_records"
    CHECKPOINT_SEQUENCE = "streamfn_checkpoint_sequence"
    BLOCKED = "streamfn_shard_blocked"
    WRITE_ERRORS = "streamfn_write_errors"
    RECORDS_TRIMMED = "streamfn_records_trimmed"
    BLOCKED_SECONDS = "streamfn_shard_blocked_seconds"
    SHARDS_OWNED = "streamfn_shards_owned"
    LEASES_HELD = "streamfn_leases_held"
    PIPELINE_STARTED = "streamfn_pipeline_started"
    HANDLER_VERSION = "streamfn_handler_version"
    APPEND_TO_DONE = "streamfn_append_to_done_seconds"
    OUTPUT_AT_LEAST_ONCE = "streamfn_output_at_least_once"


HELP: dict[Metric, str] = {
    Metric.BUILD_INFO: "Always 1; its labels say which streamfn and Python versions run here.",
    Metric.RECORDS_READ: "Records read from the source and handed to batches (after filters).",
    Metric.RECORDS_FILTERED: "Records skipped because they matched no filter (still checkpointed).",
    Metric.RECORDS_HANDLED: "Records whose handler call succeeded.",
    Metric.RECORDS_FAILED: "Records in failed handler calls, counted once per failed call.",
    Metric.RECORDS_SENT_TO_DESTINATION: "Records given up on and sent to the on-failure destination.",
    Metric.BATCHES: "Batches formed and handed to the handler.",
    Metric.RETRIES: "Failed handler calls that led to a retry, a bisect or a disposal.",
    Metric.HANDLER_DURATION: "Wall time of handler calls.",
    Metric.SINK_WRITE_SECONDS: "Seconds spent writing handler output to the sinks.",
    Metric.ATTEMPT: "Retry attempt of the batch in progress (0: first call).",
    Metric.ITERATOR_AGE: "How far the reader is behind the tip of the shard (Kinesis MillisBehindLatest, "
                         "record age for the local log), when the source reports it.",
    Metric.CHECKPOINT_LAG: "Records read but not yet done (handled or disposed of): the checkpoint is at "
                           "most this far behind the reader.",
    Metric.CHECKPOINT_SEQUENCE: "Sequence of the shard's checkpoint (NaN before the first one).",
    Metric.BLOCKED: "1 while the shard cannot move on: retrying a call, a read or a write, a handler call "
                    "stuck past its timeout, or a write in flight longer than ready_max_blocked_seconds.",
    Metric.BLOCKED_SECONDS: "Seconds the shard has been unable to move on (0 when it is moving).",
    Metric.WRITE_ERRORS: "Failed writes to sinks, the checkpoint store and the on-failure destination, by "
                         "target and kind (throttled, timeout, connection, server, storage, rejected, other).",
    Metric.RECORDS_TRIMMED: "Records the source's retention removed before this shard read them.",
    Metric.SHARDS_OWNED: "Shards this worker is processing for the pipeline.",
    Metric.LEASES_HELD: "Leases this worker holds, when the pipeline coordinates through leases.",
    Metric.PIPELINE_STARTED: "1 once the pipeline opened its parts and listed its shards.",
    Metric.HANDLER_VERSION: "Published handler version the latest batch started with (handler_version only).",
    Metric.APPEND_TO_DONE: "Seconds from a record's arrival in the source to the checkpoint covering it (with "
                           "lanes: to its lane's), per handled record, each counted with its batch's first "
                           "record's age (an upper bound).",
    Metric.OUTPUT_AT_LEAST_ONCE: "1 when output after a crash is only at-least-once because the config accepted "
                                 "a checkpoint store's loss (e.g. a Kafka broker that drops commit metadata); "
                                 "the warning logged at start says why.",
}


class ObservedRunner(Protocol):
    @property
    def stats(self) -> ShardStats: ...


class ObservedPipeline(Protocol):
    """What the collector reads from a pipeline (``engine.pipeline.Pipeline`` has all of it)."""

    @property
    def name(self) -> str: ...
    @property
    def runners(self) -> Mapping[str, ObservedRunner]: ...
    @property
    def shard_stats(self) -> Mapping[str, ShardStats]:
        """Every shard run in this process, running or not (the pipeline's totals sum these)."""
    @property
    def assigner(self) -> Assigner: ...
    @property
    def store(self) -> CheckpointStore: ...


def leases_held(pipeline: ObservedPipeline) -> int | None:
    """Leases this worker holds; None when its assigner takes no leases."""
    return pipeline.assigner.leases_held()


def checkpoint_sequence(text: str | None) -> float:
    """The numeric sequence of ``ShardStats.checkpoint`` ("12", "12:3", "SHARD_END" or None)."""
    if not text or text == "SHARD_END":
        return float("nan")
    try:
        return float(int(text.split(":", 1)[0]))
    except ValueError:
        return float("nan")


def checkpoint_lag(stats: ShardStats) -> int:
    """Records read but not yet handled or disposed of: the batch in flight and its retries."""
    return max(0, stats.read - stats.handled - stats.sent_to_destination)


def histogram_buckets(stats: ShardStats) -> list[tuple[str, float]]:
    """Cumulative ``(le, count)`` pairs from the per-bucket counts the shard keeps."""
    return cumulative_buckets(HANDLER_BUCKETS, stats.handler_buckets)


def done_buckets(shards: Iterable[ShardStats]) -> tuple[list[tuple[str, float]], float]:
    """The append-to-done histogram of a pipeline: its shards' buckets summed, and the sum of seconds."""
    counts, seconds = [0] * (len(DONE_BUCKETS) + 1), 0.0
    for stats in shards:
        counts = [a + b for a, b in zip(counts, stats.done_buckets, strict=True)]
        seconds += stats.done_seconds
    return cumulative_buckets(DONE_BUCKETS, counts), seconds


def cumulative_buckets(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    cumulative, total = [], 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        total += count
        cumulative.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
    return cumulative


class Readiness:
    """Which pipelines have started, and the readiness verdict built from their shards."""

    def __init__(self, pipelines: Callable[[], Sequence[ObservedPipeline]], max_blocked: float) -> None:
        self._pipelines = pipelines
        self.max_blocked = max_blocked
        self.started: set[str] = set()

    def mark_started(self, name: str) -> None:
        self.started.add(name)

    def is_started(self, pipeline: ObservedPipeline) -> bool:
        return pipeline.name in self.started and pipeline.assigner.settled

    def problems(self) -> list[str]:
        """Why the process is not ready (empty: ready)."""
        found: list[str] = []
        pipelines = self._pipelines()
        if not pipelines:
            found.append("no pipelines")
        for pipeline in pipelines:
            if not self.is_started(pipeline):
                found.append(f"pipeline {pipeline.name} not started")
                continue
            for shard_id, runner in list(pipeline.runners.items()):
                blocked = runner.stats.blocked_for()
                if blocked > self.max_blocked:
                    found.append(f"pipeline {pipeline.name} shard {shard_id} blocked for {blocked:.0f}s "
                                 f"by {runner.stats.blocked_cause or 'a write in flight'} "
                                 f"(attempt {runner.stats.attempt}): {runner.stats.last_error}")
        return found


class StatsCollector:
    """A prometheus-client Collector over the live pipelines; reads ShardStats only when scraped."""

    def __init__(self, pipelines: Callable[[], Sequence[ObservedPipeline]], readiness: Readiness | None = None) -> None:
        self._pipelines = pipelines
        self._readiness = readiness

    def describe(self) -> Iterable[Any]:
        return []  # series come and go with shards: no fixed description

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        shard_labels = ["pipeline", "shard"]

        def counter(metric: Metric) -> CounterMetricFamily:
            return CounterMetricFamily(metric.value, HELP[metric], labels=shard_labels)

        def gauge(metric: Metric, labels: list[str] = shard_labels) -> GaugeMetricFamily:
            return GaugeMetricFamily(metric.value, HELP[metric], labels=labels)

        counters = {m: counter(m) for m in (
            Metric.RECORDS_READ, Metric.RECORDS_FILTERED, Metric.RECORDS_HANDLED, Metric.RECORDS_FAILED,
            Metric.RECORDS_SENT_TO_DESTINATION, Metric.BATCHES, Metric.RETRIES, Metric.SINK_WRITE_SECONDS,
            Metric.RECORDS_TRIMMED)}
        write_errors = CounterMetricFamily(Metric.WRITE_ERRORS.value, HELP[Metric.WRITE_ERRORS],
                                           labels=[*shard_labels, "target", "kind"])
        stalled_after = self._readiness.max_blocked if self._readiness is not None else 300.0
        gauges = {m: gauge(m) for m in (
            Metric.ATTEMPT, Metric.ITERATOR_AGE, Metric.CHECKPOINT_LAG, Metric.CHECKPOINT_SEQUENCE,
            Metric.BLOCKED, Metric.BLOCKED_SECONDS)}
        histogram = HistogramMetricFamily(Metric.HANDLER_DURATION.value, HELP[Metric.HANDLER_DURATION],
                                          labels=shard_labels)
        owned = gauge(Metric.SHARDS_OWNED, ["pipeline"])
        leases = gauge(Metric.LEASES_HELD, ["pipeline"])
        at_least_once = gauge(Metric.OUTPUT_AT_LEAST_ONCE, ["pipeline"])
        started = gauge(Metric.PIPELINE_STARTED, ["pipeline"])
        versions = gauge(Metric.HANDLER_VERSION, ["pipeline"])
        append_to_done = HistogramMetricFamily(Metric.APPEND_TO_DONE.value, HELP[Metric.APPEND_TO_DONE],
                                               labels=["pipeline"])

        for pipeline in self._pipelines():
            runners = list(pipeline.runners.items())
            owned.add_metric([pipeline.name], len(runners))
            if pipeline.name in ACTIVE_VERSIONS:
                versions.add_metric([pipeline.name], ACTIVE_VERSIONS[pipeline.name])
            at_least_once.add_metric([pipeline.name], 0.0 if pipeline.store.at_least_once() is None else 1.0)
            held = leases_held(pipeline)
            if held is not None:
                leases.add_metric([pipeline.name], held)
            if self._readiness is not None:
                started.add_metric([pipeline.name], 1.0 if self._readiness.is_started(pipeline) else 0.0)
            for shard_id, runner in runners:
                labels = [pipeline.name, shard_id]
                self._add_shard(labels, runner.stats, counters, gauges, histogram, stalled_after)
                for (target, kind), count in list(runner.stats.write_errors.items()):
                    write_errors.add_metric([*labels, target, kind], count)
            buckets, seconds = done_buckets(list(pipeline.shard_stats.values()))
            append_to_done.add_metric([pipeline.name], buckets, seconds)
        yield from counters.values()
        yield write_errors
        yield histogram
        yield append_to_done
        yield from gauges.values()
        yield owned
        yield leases
        yield at_least_once
        yield versions
        if self._readiness is not None:
            yield started

    @staticmethod
    def _add_shard(labels: list[str], stats: ShardStats, counters: dict[Metric, Any], gauges: dict[Metric, Any],
                   histogram: Any, stalled_after: float) -> None:
        counters[Metric.RECORDS_READ].add_metric(labels, stats.read)
        counters[Metric.RECORDS_FILTERED].add_metric(labels, stats.filtered)
        counters[Metric.RECORDS_HANDLED].add_metric(labels, stats.handled)
        counters[Metric.RECORDS_FAILED].add_metric(labels, stats.failed)
        counters[Metric.RECORDS_SENT_TO_DESTINATION].add_metric(labels, stats.sent_to_destination)
        counters[Metric.BATCHES].add_metric(labels, stats.batches)
        counters[Metric.RETRIES].add_metric(labels, stats.retries)
        counters[Metric.SINK_WRITE_SECONDS].add_metric(labels, stats.sink_seconds)
        counters[Metric.RECORDS_TRIMMED].add_metric(labels, stats.trimmed)
        histogram.add_metric(labels, histogram_buckets(stats), stats.handler_seconds)
        blocked = stats.blocked_for()
        gauges[Metric.ATTEMPT].add_metric(labels, stats.attempt)
        if stats.behind_ms is not None:
            gauges[Metric.ITERATOR_AGE].add_metric(labels, stats.behind_ms / 1000.0)
        gauges[Metric.CHECKPOINT_LAG].add_metric(labels, checkpoint_lag(stats))
        gauges[Metric.CHECKPOINT_SEQUENCE].add_metric(labels, checkpoint_sequence(stats.checkpoint))
        gauges[Metric.BLOCKED].add_metric(labels, 1.0 if stats.is_blocked(stalled_after) else 0.0)
        gauges[Metric.BLOCKED_SECONDS].add_metric(labels, blocked)


def build_registry(collector: StatsCollector, *, process: bool = True) -> CollectorRegistry:
    """A registry of its own (not the global one), so two servers in one process never clash."""
    from prometheus_client import Gauge, ProcessCollector
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    build = Gauge(Metric.BUILD_INFO.value, HELP[Metric.BUILD_INFO], ["version", "python"], registry=registry)
    build.labels(__version__, platform.python_version()).set(1)
    if process:
        ProcessCollector(registry=registry)
    return registry


# -- the HTTP server --------------------------------------------------------------------------------
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request", 503: "Service Unavailable"}
_MAX_HEADER = 16 * 1024


def wants_openmetrics(accept: str) -> bool:
    """Whether an ``Accept`` header asks for OpenMetrics (Prometheus sends it first when it can parse it)."""
    return any(part.split(";", 1)[0].strip().lower() == "application/openmetrics-text" for part in accept.split(","))


def request_header(head: bytes, name: bytes) -> str:
    """One header's value from a request head ("" when absent), joined with commas if repeated."""
    values = []
    for line in head.split(b"\r\n")[1:]:
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name:
            values.append(value.strip().decode("latin-1"))
    return ", ".join(values)


class OpsServer:
    """/metrics, /healthz and /readyz over plain asyncio: one request per connection, no keep-alive.

    Kubernetes probes and Prometheus need nothing more; a stdlib server keeps the dependency
    list short and runs on the engine's own loop, so a scrape sees consistent counters.
    """

    def __init__(self, config: MetricsConfig, pipelines: Callable[[], Sequence[ObservedPipeline]]) -> None:
        self.config = config
        self.readiness = Readiness(pipelines, config.ready_max_blocked_seconds)
        self._collector = StatsCollector(pipelines, self.readiness)
        self._registry: CollectorRegistry | None = None
        self._server: asyncio.Server | None = None
        self.started_at = time.time()

    @property
    def port(self) -> int:
        """The bound port (useful with ``port = 0``)."""
        assert self._server is not None, "server not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        try:
            self._registry = build_registry(self._collector)
        except ImportError:
            raise ConfigError("the metrics endpoint needs prometheus-client: pip install 'streamfn[metrics]'",
                              field="metrics") from None
        try:
            self._server = await asyncio.start_server(self._serve, self.config.host, self.config.port)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {self.config.host}:{self.config.port}: {exc.strerror or exc}",
                              field="metrics.port") from None
        log.info("metrics endpoint listening", extra={"host": self.config.host, "port": self.port})

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def mark_started(self, pipeline: str) -> None:
        self.readiness.mark_started(pipeline)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
            status, content_type, body = self.respond(head)
            head_only = head.startswith(b"HEAD ")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            status, content_type, body = 400, "text/plain", b"bad request\n"
            head_only = False
        allow = "Allow: GET, HEAD\r\n" if status == 405 else ""
        try:
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n{allow}Connection: close\r\n\r\n".encode()
                + (b"" if head_only else body)  # HEAD: the GET's status and headers, no body
            )
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def respond(self, head: bytes) -> tuple[int, str, bytes]:
        """Status, content type and body for one request head (a HEAD request gets the GET's)."""
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3:
            return 400, "text/plain", b"bad request\n"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return 405, "text/plain", b"only GET and HEAD\n"
        if target == b"/metrics":
            assert self._registry is not None
            if wants_openmetrics(request_header(head, b"accept")):
                from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
                from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

                return 200, OPENMETRICS, openmetrics(self._registry)  # type: ignore[no-untyped-call]
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)
        if target == b"/healthz":
            return 200, "text/plain", b"ok\n"
        if target == b"/readyz":
            problems = self.readiness.problems()
            if problems:
                return 503, "text/plain", ("\n".join(problems) + "\n").encode()
            return 200, "text/plain", b"ready\n"
        return 404, "text/plain", b"not found: try /metrics, /healthz, /readyz\n"


async def start_ops_server(config: MetricsConfig, pipelines: Sequence[ObservedPipeline]) -> OpsServer:
    """Start the endpoint over a fixed list of pipelines (the daemon's)."""
    frozen = list(pipelines)
    server = OpsServer(config, lambda: frozen)
    await server.start()
    return server
