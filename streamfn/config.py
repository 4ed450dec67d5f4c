"""Pipeline files: one msgspec declaration validates them, fills defaults and yields JSON Schema.

A pipeline file is TOML, YAML or JSON. Strings may use ``${VAR}`` / ``${VAR:-default}``.
Every error names the file, the field path and what was expected.
"""

from __future__ import annotations

import functools
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, Optional, Union, cast, get_type_hints

import msgspec
import yaml

from . import registry
from .aws import AwsSettings
from .components import BuildContext
from .config_doc import accept_lambda_spellings, document_schema, explain_choices
from .engine.batching import BatchLimits
from .engine.policy import FailurePolicy
from .errors import ConfigError
from .interpolate import MissingVariable, interpolate
from .metrics import MetricsConfig
from .paths import name_problem
from .protocols.checkpoint import CheckpointConfig
from .protocols.destination import DestinationConfig
from .protocols.sink import SinkConfig
from .protocols.source import SourceConfig
from .versions import version_ref_problem


class BatchingConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """When a batch is handed to the handler: whichever limit is reached first."""

    max_records: Annotated[int, msgspec.Meta(description=(
        "Most records in one handler call (Lambda's BatchSize)."))] = 100
    max_bytes: Annotated[int, msgspec.Meta(description=(
        "Most bytes of record data in one handler call (default 6 MiB, Lambda's payload limit)."))] = 6 * 1024 * 1024
    window: Annotated[float, msgspec.Meta(description=(
        "Seconds to gather records before a call (0: call as soon as records are there). The window starts when "
        "the previous call finished."))] = 0.0

    def __post_init__(self) -> None:
        if self.max_records < 1:
            raise ValueError("max_records must be at least 1")
        if self.max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if not 0 <= self.window <= 300:
            raise ValueError("window must be between 0 and 300 seconds")

    def limits(self) -> BatchLimits:
        return BatchLimits(max_records=self.max_records, max_bytes=self.max_bytes, window=self.window)


class RetryConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Retry until success by default; each limit below is off unless set."""

    initial_delay: Annotated[float, msgspec.Meta(description=(
        "Seconds before the first retry of a failed batch; each retry doubles it (with jitter) up to max_delay."
    ))] = 0.5
    max_delay: Annotated[float, msgspec.Meta(description=(
        "Most seconds between two retries of a failed batch."))] = 30.0
    max_attempts: Annotated[int, msgspec.Meta(description=(
        "Retries after the first call before the batch goes to `on_failure` (-1: no limit)."))] = -1
    max_record_age: Annotated[float, msgspec.Meta(description=(
        "Seconds after arrival past which a record goes to `on_failure` (-1: no limit, else >= 60)."))] = -1.0
    bisect_on_error: Annotated[bool, msgspec.Meta(description=(
        "Split a failing batch in halves and retry each, to isolate a poison record."))] = False

    def __post_init__(self) -> None:
        if self.initial_delay <= 0 or self.max_delay < self.initial_delay:
            raise ValueError("need 0 < initial_delay <= max_delay")
        if self.max_attempts < -1:
            raise ValueError("max_attempts must be -1 (no limit) or at least 0")
        if self.max_record_age != -1 and self.max_record_age < 60:
            raise ValueError("max_record_age must be -1 (no limit) or at least 60 seconds")

    def policy(self) -> FailurePolicy:
        return FailurePolicy(
            initial_delay=self.initial_delay, max_delay=self.max_delay, max_attempts=self.max_attempts,
            max_record_age=self.max_record_age, bisect_on_error=self.bisect_on_error,
        )


class PipelineConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One pipeline: a source, a handler, its sinks, and how failures are handled.

    Files are decoded into :func:`pipeline_config_type`, this class with its parts' fields typed as
    the unions of the registered connectors' configs.
    """

    name: Annotated[str, msgspec.Meta(description=(
        "1-128 letters, digits, '.', '_' or '-', not starting with '.': it appears in object keys and ARNs."))]
    handler: Annotated[str, msgspec.Meta(description=(
        "`module:function`, looked up in the config's folder, then the working directory (with "
        "`interface = \"runtime-api\"`: the runtime's `_HANDLER`, as written, e.g. `app.handler`)."))]
    handler_version: Annotated[int | str | None, msgspec.Meta(description=(
        "A version published with `streamfn publish` to run instead of the working copy: its number, or an alias "
        "(`streamfn alias set`) that a running daemon follows at batch boundaries."))] = None
    source: Annotated[SourceConfig, msgspec.Meta(description=(
        "Where records come from: a table whose `type` is local, kinesis, dynamodb_streams or kafka."))]
    interface: Annotated[Literal["native", "lambda", "runtime-api"], msgspec.Meta(description=(
        "`native` (a Batch of Records), `lambda` (an unmodified AWS Lambda stream handler) or `runtime-api` (any "
        "Lambda runtime, started from `command`, talking the Lambda Runtime API that streamfn serves it)."
    ))] = "native"
    command: Annotated[list[str], msgspec.Meta(description=(
        "The runtime process of `interface = \"runtime-api\"`, e.g. `[\"python\", \"-m\", \"awslambdaric\", "
        "\"app.handler\"]` or `[\"./bootstrap\"]`; run in the config's folder, one warm process per lane."
    ))] = msgspec.field(default_factory=list)
    isolation: Annotated[Literal["thread", "process"], msgspec.Meta(description=(
        "`thread` (in streamfn's process) or `process` (a worker process per lane, killed at the timeout). A "
        "runtime-api handler always runs in processes of its own."))] = "thread"
    memory_limit_mb: Annotated[int, msgspec.Meta(description=(
        "Address-space limit (RLIMIT_AS) of each handler process, in MiB (0: none)."))] = 0
    state_dir: Annotated[str, msgspec.Meta(description=(
        "Where local state lives (log, checkpoints), relative to the config's folder."))] = "state"
    timeout: Annotated[float, msgspec.Meta(description=(
        "Seconds a handler call may take before it counts as failed."))] = 60.0
    starting_position: Annotated[Literal["trim_horizon", "latest", "at_timestamp"], msgspec.Meta(description=(
        "Where a shard without a checkpoint starts. DynamoDB Streams has no `at_timestamp`."))] = "trim_horizon"
    starting_timestamp: Annotated[float | None, msgspec.Meta(description=(
        'Epoch seconds, with `starting_position = "at_timestamp"` only.'))] = None
    batching: Annotated[BatchingConfig, msgspec.Meta(description=(
        "When a batch is handed to the handler: whichever limit is reached first."
    ))] = msgspec.field(default_factory=BatchingConfig)
    retry: Annotated[RetryConfig, msgspec.Meta(description=(
        "How failed batches are retried: until success, unless a limit below is set."
    ))] = msgspec.field(default_factory=RetryConfig)
    report_batch_item_failures: Annotated[bool, msgspec.Meta(description=(
        "The handler may answer `{\"batchItemFailures\": [...]}` (Lambda's ReportBatchItemFailures): only the "
        "records from the first failed one on are retried."))] = False
    parallelization_factor: Annotated[int, msgspec.Meta(description=(
        "Concurrent batches per shard (lanes by partition-key hash; per-key order holds). Lambda allows 1-10; "
        "more is allowed here, each lane costing a task and a queue of 2 x max_records records."))] = 1
    tumbling_window: Annotated[float, msgspec.Meta(description=(
        "Seconds per tumbling window (0: off; 1-900). Handler state is carried between the calls of a window, per "
        "shard, and kept with the checkpoint; the last call of a window is final."))] = 0.0
    filters: Annotated[list[dict[str, Any] | str], msgspec.Meta(description=(
        "Lambda/EventBridge event patterns (tables or JSON strings), ORed; records matching none are skipped and "
        "still checkpointed. Patterns see the record's metadata and its JSON data."
    ))] = msgspec.field(default_factory=list)
    sinks: Annotated[list[SinkConfig], msgspec.Meta(description=(
        "Where the handler's output items go, each durably and idempotently; none: the output is dropped."
    ))] = msgspec.field(default_factory=list)
    checkpoints: Annotated[CheckpointConfig | None, msgspec.Meta(description=(
        "Where per-shard progress is kept; default: SQLite in state_dir. `dynamodb` shares shards among workers "
        "through a KCL-style lease table; `kafka` keeps the consumer group's committed offsets."))] = None
    on_failure: Annotated[DestinationConfig | None, msgspec.Meta(description=(
        "Where a batch goes, with its records, when a retry limit gives up on it (Lambda's on-failure "
        "destination)."))] = None
    function_arn: Annotated[str | None, msgspec.Meta(description=(
        "The function ARN failure records and the Lambda context name (`requestContext.functionArn`); default "
        "`arn:aws:lambda:local:000000000000:function:<name>`."))] = None
    shutdown_timeout: Annotated[float, msgspec.Meta(description=(
        "Seconds a graceful stop may take to finish in-flight batches before abandoning them."))] = 30.0
    handler_output: Annotated[Literal["capture", "capture_all", "off"], msgspec.Meta(description=(
        "A handler call's print and logging output: `capture` writes it whole as log lines tagged with pipeline, "
        "shard and request id, between START/END/REPORT lines (a call that wrote nothing writes no frame); "
        "`capture_all` frames every call, as Lambda does; `off` leaves it alone."))] = "capture"
    metrics: Annotated[MetricsConfig | None, msgspec.Meta(description=(
        "Prometheus /metrics, /healthz and /readyz (off unless `enabled`; `--metrics-port` turns it on and keeps "
        "the other settings)."))] = None
    aws: Annotated[AwsSettings, msgspec.Meta(description=(
        "Region, endpoint and credentials profile every AWS part (source, sink, checkpoints, on_failure) uses "
        "unless it sets its own; unset: the environment's, as the AWS SDKs read it."))] = AwsSettings()

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            # ConfigError (not ValueError) passes through msgspec unchanged, keeping the field it names.
            field, why = problems[0]
            raise ConfigError(why, field=field)

    def problems(self) -> list[tuple[str, str]]:
        """``(field, why)`` for each setting that is invalid alone or cannot work with the others."""
        found = [(field, why) for field, why in self._own_problems() if why]
        found += [(field, why) for field, why in self._combination_problems() if why]
        return found

    def _own_problems(self) -> list[tuple[str, str | None]]:
        return [
            ("name", name_problem(self.name)),
            ("handler_version", version_ref_problem(self.handler_version)),
            ("parallelization_factor", "must be at least 1" if self.parallelization_factor < 1 else None),
            ("tumbling_window", "must be 0 (off) or between 1 and 900 seconds"
             if self.tumbling_window and not 1 <= self.tumbling_window <= 900 else None),
            ("timeout", "must be positive" if self.timeout <= 0 else None),
            ("memory_limit_mb", "must be 0 (no limit) or a positive number of MiB"
             if self.memory_limit_mb < 0 else None),
            ("shutdown_timeout", "must be positive" if self.shutdown_timeout <= 0 else None),
            *(("source." + field, why) for field, why in self.source.problems()),
            *(("on_failure." + field, why) for field, why in (self.on_failure.problems() if self.on_failure else [])),
        ]

    def _combination_problems(self) -> list[tuple[str, str | None]]:
        source, at_timestamp = self.source, self.starting_position == "at_timestamp"
        source_type, own = registry.type_of(source), source.own_checkpoints
        checkpoints_type = registry.type_of(self.checkpoints) if self.checkpoints is not None else None
        needs_source = self.checkpoints.source_type if self.checkpoints is not None else None
        return [
            ("tumbling_window", "tumbling_window works per shard: it cannot be combined with "
             "parallelization_factor > 1" if self.tumbling_window and self.parallelization_factor > 1 else None),
            ("tumbling_window", self.checkpoints.window_state_problem()
             if self.tumbling_window and self.checkpoints is not None else None),
            ("starting_timestamp", "starting_position 'at_timestamp' needs starting_timestamp"
             if at_timestamp and self.starting_timestamp is None else None),
            ("starting_timestamp", "is used only with starting_position = 'at_timestamp': set both or neither"
             if not at_timestamp and self.starting_timestamp is not None else None),
            ("starting_position", f"{source.unsupported_starts[self.starting_position]}: use one of "
             f"{_allowed_starts(source)}" if self.starting_position in source.unsupported_starts else None),
            ("checkpoints", f"a {source_type} source keeps its own checkpoints: use [checkpoints] type = {own!r}"
             if own is not None and checkpoints_type not in (None, own) else None),
            ("checkpoints", f"type = {checkpoints_type!r} needs a source of type {needs_source!r}"
             if needs_source is not None and source_type != needs_source else None),
            ("on_failure", "retry.max_attempts / retry.max_record_age need an on_failure destination: "
             "without one, records would be dropped"
             if self.retry.policy().has_limit and self.on_failure is None else None),
            *self._process_problems(),
        ]

    def _process_problems(self) -> list[tuple[str, str | None]]:
        runtime_api = self.interface == "runtime-api"
        in_process = not runtime_api and self.isolation == "thread"
        return [
            ("command", "interface 'runtime-api' needs the command that starts the runtime, e.g. "
             "['python', '-m', 'awslambdaric', 'app.handler'] or ['./bootstrap']"
             if runtime_api and not [part for part in self.command if part] else None),
            ("command", "is used only with interface = 'runtime-api' (a native or lambda handler is "
             "imported from `handler`)" if self.command and not runtime_api else None),
            ("memory_limit_mb", "limits a handler process: set isolation = 'process' or interface = 'runtime-api'"
             if self.memory_limit_mb and in_process else None),
            ("handler_version", "published versions run in streamfn's process for now: remove handler_version, "
             "or run the working copy with interface = 'runtime-api' / isolation = 'process'"
             if self.handler_version is not None and not in_process else None),
        ]


_STARTS = ("trim_horizon", "latest", "at_timestamp")


def _allowed_starts(source: SourceConfig) -> str:
    return ", ".join(repr(start) for start in _STARTS if start not in source.unsupported_starts)


@functools.cache
def pipeline_config_type() -> type[PipelineConfig]:
    """:class:`PipelineConfig` with its parts typed as tagged unions of every registered connector's
    configs: what files are decoded into and what ``streamfn schema`` describes."""
    def union(configs: tuple[type[Any], ...]) -> Any:
        return Union[configs] if configs else NoReturn  # noqa: UP007 - a union built at run time

    declared = get_type_hints(PipelineConfig, include_extras=True)

    def described(name: str, kind: Any) -> Any:
        """``kind`` with the description PipelineConfig declares for ``name``."""
        return Annotated[kind, *declared[name].__metadata__]

    sources, sinks = union(registry.source_configs()), union(registry.sink_configs())
    checkpoints, destinations = union(registry.checkpoint_configs()), union(registry.destination_configs())
    fields: list[tuple[str, Any, Any]] = [
        ("source", described("source", sources), msgspec.NODEFAULT),
        ("sinks", described("sinks", list[sinks]), msgspec.field(default_factory=list)),  # type: ignore[valid-type]
        ("checkpoints", described("checkpoints", Optional[checkpoints]), None),  # noqa: UP045
        ("on_failure", described("on_failure", Optional[destinations]), None),  # noqa: UP045
    ]
    loaded = msgspec.defstruct("PipelineConfig", fields, bases=(PipelineConfig,), kw_only=True,
                               forbid_unknown_fields=True, module=__name__)
    loaded.__doc__ = PipelineConfig.__doc__
    return cast(type[PipelineConfig], loaded)


class LoadedPipeline(msgspec.Struct, frozen=True):
    """A validated pipeline with the file it came from."""

    config: PipelineConfig
    path: Path
    #: The handler as a callable, when a program passed one (``streamfn.pipeline(handler=...)``);
    #: None: it is imported from ``config.handler``.
    handler: Callable[..., Any] | None = None

    @property
    def context(self) -> BuildContext:
        config_dir = self.path.parent.resolve()
        state = Path(self.config.state_dir).expanduser()
        return BuildContext(
            pipeline=self.config.name,
            config_dir=config_dir,
            state_dir=state if state.is_absolute() else config_dir / state,
            aws=self.config.aws,
        )


def parse_document(path: Path) -> Any:
    """The raw document in ``path`` (TOML, YAML or JSON by suffix)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from None
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text)
        if path.suffix in (".yaml", ".yml"):
            return yaml.safe_load(text)
        if path.suffix == ".json":
            return msgspec.json.decode(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError, msgspec.DecodeError) as exc:
        raise ConfigError(f"not valid {path.suffix[1:].upper()}: {exc}", file=str(path)) from None
    raise ConfigError("unknown file type: use .toml, .yaml, .yml or .json", file=str(path))


def load_pipeline(path: str | Path, env: Mapping[str, str] | None = None) -> LoadedPipeline:
    """Read, interpolate and validate one pipeline file."""
    path = Path(path)
    document = parse_document(path)
    if not isinstance(document, dict):
        raise ConfigError("expected a table of settings at the top level", file=str(path))
    try:
        document = interpolate(document, os.environ if env is None else env)
    except MissingVariable as exc:
        raise ConfigError(str(exc), file=str(path), field=exc.path) from None
    document = accept_lambda_spellings(document)
    try:
        config = msgspec.convert(document, pipeline_config_type(), strict=False)
    except msgspec.ValidationError as exc:
        message, field = describe_validation_error(exc)
        message = explain_choices(message, field, json_schema(), document)
        raise ConfigError(message, file=str(path), field=field) from None
    except ConfigError as exc:
        raise ConfigError(exc.message, file=str(path), field=exc.field) from None
    loaded = LoadedPipeline(config=config, path=path)
    check_components(loaded)
    return loaded


def check_components(loaded: LoadedPipeline) -> None:
    """Build-time checks a struct cannot express (templates, paths): errors name the file."""
    config, ctx = loaded.config, loaded.context
    from .engine.filters import FilterSet

    for index, pattern in enumerate(config.filters):
        try:
            FilterSet([pattern])
        except ValueError as exc:
            raise ConfigError(str(exc), file=str(loaded.path), field=f"filters[{index}]") from None
    if len(config.filters) > 10:
        raise ConfigError("at most 10 filters", file=str(loaded.path), field="filters")
    stream = config.source.stream_name()
    for index, sink in enumerate(config.sinks):
        try:
            sink.build(ctx)
            sink.check(config.name, stream)
        except ConfigError as exc:
            field = f"sinks[{index}]" + (f".{exc.field.removeprefix('sinks.')}" if exc.field else "")
            raise ConfigError(exc.message, file=str(loaded.path), field=field) from None
    if config.on_failure is not None:
        try:
            config.on_failure.check(ctx)
        except ConfigError as exc:
            field = "on_failure" + (f".{exc.field}" if exc.field else "")
            raise ConfigError(exc.message, file=str(loaded.path), field=field) from None
    looping = config.on_failure.feeds(config.source, ctx) if config.on_failure is not None else None
    if looping is not None:
        raise ConfigError("the on_failure destination is the pipeline's own source stream: failure records would "
                          "be read back and fail again, forever; send them to another stream",
                          file=str(loaded.path), field=f"on_failure.{looping}")


_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_NAMED = re.compile(r"(?:missing required field|contains unknown field) `(?P<name>[^`]+)`")


def describe_validation_error(exc: msgspec.ValidationError) -> tuple[str, str | None]:
    """msgspec's message split into (what was expected, dotted field path)."""
    match = _AT.match(str(exc))
    assert match is not None
    message, path = match.group("message"), (match.group("path") or "").lstrip(".")
    named = _NAMED.search(message)
    if named:
        path = f"{path}.{named.group('name')}" if path else named.group("name")
    return message, path or None


def json_schema() -> dict[str, Any]:
    """JSON Schema of a pipeline file, for editors and documentation."""
    return document_schema(msgspec.json.schema(pipeline_config_type()))
