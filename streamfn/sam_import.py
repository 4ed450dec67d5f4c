"""``streamfn import``: SAM / CloudFormation stream event source mappings as pipeline files.

Each ``AWS::Lambda::EventSourceMapping`` and each ``Kinesis``, ``DynamoDB``, ``MSK`` or
``SelfManagedKafka`` event of an ``AWS::Serverless::Function`` becomes one YAML pipeline file, with
every mapping property carried over under its streamfn name. ``Ref``, ``Fn::GetAtt``, ``Fn::Sub``,
``Fn::Join``, ``Fn::Select``, ``Fn::FindInMap`` and parameters are resolved where the template
alone says what they are; whatever cannot be carried over is named, in the file's header and in
the command's output, never dropped silently.

The handler runs as Lambda runs it: the function's code directory (``CodeUri``, ``LAMBDA_TASK_ROOT``)
first on the import path, through a small generated module beside the pipeline file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .cfn_template import Resolver, Unresolved, load_template
from .errors import ConfigError

EVENT_TYPES = ("Kinesis", "DynamoDB", "MSK", "SelfManagedKafka")
FUNCTION_TYPES = ("AWS::Serverless::Function", "AWS::Lambda::Function")
#: Lambda's default function timeout, used when neither the function nor Globals set one.
LAMBDA_DEFAULT_TIMEOUT = 3


# -- functions and their mappings ---------------------------------------------------------
@dataclass
class Function:
    logical_id: str
    handler: str | None
    runtime: str | None
    code_dir: Path | None
    inline_code: str | None
    timeout: Any
    #: Function settings streamfn does not carry over (named in the output).
    dropped: list[str] = field(default_factory=list)


@dataclass
class StreamMapping:
    """One stream event source mapping: a name, its function, its kind, its Lambda properties."""

    name: str
    function: str | None
    kind: str
    properties: dict[str, Any]


_FUNCTION_SETTINGS_DROPPED = ("MemorySize", "Environment", "Layers", "Role", "Policies", "VpcConfig",
                              "ReservedConcurrentExecutions", "AutoPublishAlias", "Architectures", "Tracing")


def functions(template: Mapping[str, Any], resolver: Resolver, base: Path) -> dict[str, Function]:
    """Every function of the template, with Globals applied (SAM) and its code located."""
    defaults = ((template.get("Globals") or {}).get("Function")) or {}
    found: dict[str, Function] = {}
    for logical_id, resource in resolver.resources.items():
        if not isinstance(resource, dict) or resource.get("Type") not in FUNCTION_TYPES:
            continue
        props = {**defaults, **(resource.get("Properties") or {})} if resource["Type"] == FUNCTION_TYPES[0] \
            else dict(resource.get("Properties") or {})
        code_dir, inline = None, None
        code_uri = resolver.resolve(props.get("CodeUri"))
        code = resolver.resolve(props.get("Code"))
        if isinstance(props.get("InlineCode"), str):
            inline = props["InlineCode"]
        elif isinstance(code, dict) and isinstance(code.get("ZipFile"), str):
            inline = code["ZipFile"]
        elif isinstance(code_uri, str) and not code_uri.startswith("s3://"):
            code_dir = (base / code_uri).resolve()
        elif code_uri is None and code is None:
            code_dir = base.resolve()
        handler, runtime = resolver.resolve(props.get("Handler")), resolver.resolve(props.get("Runtime"))
        dropped = [key for key in _FUNCTION_SETTINGS_DROPPED if key in props]
        found[logical_id] = Function(
            logical_id, handler if isinstance(handler, str) else None, runtime if isinstance(runtime, str) else None,
            code_dir, inline, resolver.resolve(props.get("Timeout", LAMBDA_DEFAULT_TIMEOUT)), dropped)
    return found


def mappings(resolver: Resolver) -> Iterator[StreamMapping]:
    """Every stream mapping: SAM function events of the four stream types, then ESM resources."""
    for logical_id, resource in resolver.resources.items():
        if not isinstance(resource, dict):
            continue
        if resource.get("Type") == "AWS::Serverless::Function":
            events = (resource.get("Properties") or {}).get("Events") or {}
            for event_id, event in events.items():
                if isinstance(event, dict) and event.get("Type") in EVENT_TYPES:
                    yield StreamMapping(f"{logical_id}-{event_id}", logical_id, event["Type"],
                                        dict(event.get("Properties") or {}))
        elif resource.get("Type") == "AWS::Lambda::EventSourceMapping":
            props = dict(resource.get("Properties") or {})
            function = _function_id(props.get("FunctionName"))
            yield StreamMapping(logical_id, function, _esm_kind(props, resolver), props)


def _function_id(ref: Any) -> str | None:
    """The logical id of the template's function a ``FunctionName`` points at, if it is one."""
    if isinstance(ref, dict) and "Ref" in ref:
        return str(ref["Ref"])
    if isinstance(ref, dict) and "Fn::GetAtt" in ref:
        target = ref["Fn::GetAtt"]
        return str(target.split(".")[0] if isinstance(target, str) else target[0])
    return None


def _esm_kind(props: Mapping[str, Any], resolver: Resolver) -> str:
    if "SelfManagedEventSource" in props:
        return "SelfManagedKafka"
    arn = resolver.resolve(props.get("EventSourceArn"))
    if isinstance(arn, Unresolved):
        return "DynamoDB" if isinstance(arn.hint, dict) and "table" in arn.hint else "Unknown"
    service = str(arn).split(":")[2] if str(arn).count(":") >= 5 else ""
    return {"kinesis": "Kinesis", "dynamodb": "DynamoDB", "kafka": "MSK"}.get(service, f"Unknown ({arn})")


# -- one pipeline file -------------------------------------------------------------------
@dataclass
class Converted:
    name: str
    document: dict[str, Any]
    #: Everything that was not carried over, or was carried over by assumption, one line each.
    notes: list[str]
    #: A generated module beside the pipeline file: (file name, code).
    modules: list[tuple[str, str]] = field(default_factory=list)


_STARTING = {"TRIM_HORIZON": "trim_horizon", "LATEST": "latest", "AT_TIMESTAMP": "at_timestamp"}
_KAFKA_STARTING = {"TRIM_HORIZON": "earliest", "LATEST": "latest", "AT_TIMESTAMP": "at_timestamp"}
#: Properties of a mapping that name its source, handled by ``_source``.
_SOURCE_KEYS = ("Stream", "EventSourceArn", "Topics", "KafkaBootstrapServers", "SelfManagedEventSource",
                "ConsumerGroupId", "AmazonManagedKafkaEventSourceConfig", "SelfManagedKafkaEventSourceConfig",
                "FunctionName", "StartingPosition", "StartingPositionTimestamp")


def convert(mapping: StreamMapping, function: Function | None, resolver: Resolver, out_dir: Path) -> Converted:
    """The pipeline document for one mapping (raises ConfigError when no pipeline can be made)."""
    notes: list[str] = []
    props = {key: resolver.resolve(value) for key, value in mapping.properties.items() if key != "FunctionName"}
    document: dict[str, Any] = {"name": mapping.name, "state_dir": f"state/{mapping.name}"}
    modules = _handler(mapping, function, out_dir, document, notes)
    document["interface"] = "lambda"
    document["source"] = _source(mapping.kind, props, document, notes)
    if any(note.startswith("AWS::Region") for note in resolver.assumed):
        document["source"].pop("region", None)  # the stand-in region must not override the environment's
    _behaviour(props, document, notes)
    for key in props:
        if key not in _SOURCE_KEYS and key not in _BEHAVIOUR_KEYS:
            notes.append(f"{key}: not carried over (no streamfn equivalent)")
    return Converted(mapping.name, document, notes, modules)


def _handler(mapping: StreamMapping, function: Function | None, out_dir: Path, document: dict[str, Any],
             notes: list[str]) -> list[tuple[str, str]]:
    if function is None:
        raise ConfigError("its FunctionName is not a function of this template, so its code is unknown")
    if function.runtime is not None and not function.runtime.startswith("python"):
        raise ConfigError(f"runtime {function.runtime} is not Python; streamfn runs Python handlers in-process")
    if function.handler is None or "." not in function.handler:
        raise ConfigError(f"function {function.logical_id} has no Handler 'module.function'")
    module, attr = function.handler.rsplit(".", 1)
    shim = "sam_" + re.sub(r"[^A-Za-z0-9_]", "_", mapping.name).lower()
    modules: list[tuple[str, str]] = []
    if function.inline_code is not None:
        code_dir = out_dir / f"{shim}_code"
        modules.append((f"{shim}_code/{module.replace('.', '/')}.py", function.inline_code))
    else:
        if function.code_dir is None:
            raise ConfigError(f"function {function.logical_id}'s code is in S3; download it and point CodeUri at "
                              "the folder")
        code_dir = function.code_dir
    task_root = os.path.relpath(code_dir, out_dir)
    modules.append((f"{shim}.py", _SHIM.format(name=mapping.name, function=function.logical_id,
                                               task_root=task_root, module=module, attr=attr)))
    document["handler"] = f"{shim}:{attr}"
    if isinstance(function.timeout, (int, float)):
        document["timeout"] = function.timeout
    notes.extend(f"function {function.logical_id} {key}: not carried over" for key in function.dropped)
    return modules


_SHIM = '''"""Generated by `streamfn import` for {name}: runs function {function}'s handler unchanged, with
its code folder first on the import path as Lambda's LAMBDA_TASK_ROOT is."""

import sys
from pathlib import Path

_TASK_ROOT = str((Path(__file__).parent / {task_root!r}).resolve())
if _TASK_ROOT not in sys.path:
    sys.path.insert(0, _TASK_ROOT)

from {module} import {attr}  # noqa: E402

__all__ = [{attr!r}]
'''


def _source(kind: str, props: dict[str, Any], document: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    position = props.get("StartingPosition")
    timestamp = props.get("StartingPositionTimestamp")
    if kind in ("Kinesis", "DynamoDB"):
        if isinstance(position, str) and position in _STARTING:
            document["starting_position"] = _STARTING[position]
        if isinstance(timestamp, (int, float)):
            document["starting_timestamp"] = timestamp
        arn = props.get("Stream", props.get("EventSourceArn"))
        return _kinesis(arn, notes) if kind == "Kinesis" else _dynamodb(arn, notes)
    if kind in ("MSK", "SelfManagedKafka"):
        return _kafka(kind, props, position, timestamp, notes)
    raise ConfigError(f"source {kind}: not a stream streamfn reads (Kinesis, DynamoDB Streams, Kafka)")


def _kinesis(arn: Any, notes: list[str]) -> dict[str, Any]:
    if isinstance(arn, Unresolved) or not isinstance(arn, str):
        raise ConfigError(f"the Kinesis stream cannot be resolved: {arn!r}")
    source: dict[str, Any] = {"type": "kinesis"}
    parts = arn.split(":", 5)
    if len(parts) == 6 and parts[0] == "arn":
        stream = parts[5].removeprefix("stream/")
        if "/consumer/" in stream:
            stream = stream.split("/consumer/", 1)[0]
            notes.append("Stream: an enhanced fan-out consumer; streamfn reads the stream with polling")
        source["stream"] = stream
        source["region"] = parts[3]
    else:
        source["stream"] = arn
    return source


def _dynamodb(arn: Any, notes: list[str]) -> dict[str, Any]:
    if isinstance(arn, Unresolved) and isinstance(arn.hint, dict) and "table" in arn.hint:
        return {"type": "dynamodb_streams", "table": arn.hint["table"]}
    if not isinstance(arn, str):
        raise ConfigError(f"the DynamoDB stream cannot be resolved: {arn!r}")
    parts = arn.split(":", 5)
    source: dict[str, Any] = {"type": "dynamodb_streams", "stream_arn": arn}
    if len(parts) == 6:
        source["region"] = parts[3]
    return source


def _kafka(kind: str, props: dict[str, Any], position: Any, timestamp: Any, notes: list[str]) -> dict[str, Any]:
    topics = props.get("Topics")
    if not isinstance(topics, list) or len(topics) != 1 or not isinstance(topics[0], str):
        raise ConfigError(f"Topics must name exactly one topic (Lambda's rule), not {topics!r}")
    group = props.get("ConsumerGroupId")
    for key in ("AmazonManagedKafkaEventSourceConfig", "SelfManagedKafkaEventSourceConfig"):
        config = props.get(key)
        if isinstance(config, dict) and isinstance(config.get("ConsumerGroupId"), str):
            group = config["ConsumerGroupId"]
    servers = props.get("KafkaBootstrapServers")
    endpoints = props.get("SelfManagedEventSource")
    if isinstance(endpoints, dict):
        servers = (endpoints.get("Endpoints") or {}).get("KafkaBootstrapServers")
    if isinstance(servers, list) and all(isinstance(s, str) for s in servers):
        bootstrap = ",".join(servers)
    else:
        bootstrap = "${KAFKA_BOOTSTRAP_SERVERS:-localhost:9092}"
        cluster = props.get("Stream", props.get("EventSourceArn"))
        notes.append(f"bootstrap servers of {'cluster ' + str(cluster) if kind == 'MSK' else 'the cluster'} are "
                     "not in the template: set KAFKA_BOOTSTRAP_SERVERS")
    source: dict[str, Any] = {"type": "kafka", "bootstrap_servers": bootstrap, "topic": topics[0],
                              "group_id": group if isinstance(group, str) else f"streamfn-{topics[0]}"}
    if not isinstance(group, str):
        notes.append(f"ConsumerGroupId: not set (Lambda uses the mapping's UUID); group_id {source['group_id']!r} "
                     "is used")
    if isinstance(position, str) and position in _KAFKA_STARTING:
        source["starting_position"] = _KAFKA_STARTING[position]
    if isinstance(timestamp, (int, float)):
        source["starting_timestamp"] = timestamp
    if props.get("SourceAccessConfigurations"):
        notes.append("SourceAccessConfigurations: not carried over (set the source's security_protocol, "
                     "sasl_* and ssl_* fields)")
    return source


_BEHAVIOUR_KEYS = ("BatchSize", "MaximumBatchingWindowInSeconds", "ParallelizationFactor",
                   "BisectBatchOnFunctionError", "MaximumRetryAttempts", "MaximumRecordAgeInSeconds",
                   "FunctionResponseTypes", "TumblingWindowInSeconds", "FilterCriteria", "DestinationConfig",
                   "Enabled", "SourceAccessConfigurations")


def _behaviour(props: dict[str, Any], document: dict[str, Any], notes: list[str]) -> None:
    """Batching, retries, failures, windows, filters, destination: every Lambda name to its field."""
    for key in _BEHAVIOUR_KEYS:
        if isinstance(props.get(key), Unresolved):
            notes.append(f"{key}: not carried over ({props.pop(key).why})")
    batching = {"max_records": props.get("BatchSize"), "window": props.get("MaximumBatchingWindowInSeconds")}
    retry = {"max_attempts": props.get("MaximumRetryAttempts"),
             "max_record_age": props.get("MaximumRecordAgeInSeconds"),
             "bisect_on_error": props.get("BisectBatchOnFunctionError")}
    if any(v is not None for v in batching.values()):
        document["batching"] = {k: v for k, v in batching.items() if v is not None}
    if any(v is not None for v in retry.values()):
        document["retry"] = {k: v for k, v in retry.items() if v is not None}
    for key, target in (("ParallelizationFactor", "parallelization_factor"),
                        ("TumblingWindowInSeconds", "tumbling_window")):
        if props.get(key) is not None:
            document[target] = props[key]
    if "ReportBatchItemFailures" in (props.get("FunctionResponseTypes") or []):
        document["report_batch_item_failures"] = True
    filters = (props.get("FilterCriteria") or {}).get("Filters") or []
    patterns = [f.get("Pattern") for f in filters if isinstance(f, dict)]
    if patterns:
        document["filters"] = [p if isinstance(p, str) else json.dumps(p) for p in patterns]
    destination = _destination(props.get("DestinationConfig"), document, notes)
    if destination is None and _has_limit(retry):
        destination = {"type": "local", "path": f"failed/{document['name']}"}
        notes.append("no on-failure destination: records Lambda would discard after the retry limits are kept "
                     f"as failure records under failed/{document['name']}/ instead")
    if destination is not None:
        document["on_failure"] = destination
    if props.get("Enabled") is False:
        notes.append("Enabled: false: streamfn runs every pipeline it is given; leave this file out of "
                     "`streamfn run` to keep it paused")


def _has_limit(retry: Mapping[str, Any]) -> bool:
    limits = (retry.get("max_attempts"), retry.get("max_record_age"))
    return any(isinstance(limit, (int, float)) and limit >= 0 for limit in limits)


def _destination(config: Any, document: dict[str, Any], notes: list[str]) -> dict[str, Any] | None:
    if not isinstance(config, dict):
        return None
    if "OnSuccess" in config:
        notes.append("DestinationConfig.OnSuccess: not carried over (Lambda supports none for streams)")
    target = (config.get("OnFailure") or {}).get("Destination")
    if target is None:
        return None
    if isinstance(target, Unresolved):
        notes.append(f"DestinationConfig.OnFailure: not carried over ({target.why})")
        return _unresolved_destination(target, notes)
    target = str(target)
    if target.startswith("kafka://"):
        source = document.get("source") or {}
        return {"type": "kafka", "bootstrap_servers": source.get("bootstrap_servers", ""),
                "topic": target.removeprefix("kafka://")}
    service = target.split(":")[2] if target.count(":") >= 5 else ""
    if service == "sqs":
        return {"type": "sqs", "queue": target}
    if service == "sns":
        return {"type": "sns", "topic_arn": target}
    if service == "s3":
        return {"type": "s3", "bucket": target.rsplit(":", 1)[-1]}
    notes.append(f"DestinationConfig.OnFailure: {target} is not an SQS, SNS, S3 or Kafka destination")
    return None


def _unresolved_destination(target: Unresolved, notes: list[str]) -> dict[str, Any] | None:
    if isinstance(target.hint, dict) and "queue" in target.hint:
        notes.pop()  # carried over after all: by the queue's name
        return {"type": "sqs", "queue": target.hint["queue"]}
    return None


# -- the command -------------------------------------------------------------------------
@dataclass
class ImportResult:
    written: list[tuple[Path, list[str]]]
    skipped: list[tuple[str, str]]


def import_template(path: Path, out_dir: Path, parameters: Mapping[str, str] | None = None) -> ImportResult:
    """Write one pipeline file per stream mapping of the template at ``path`` into ``out_dir``."""
    template = load_template(path)
    resolver = Resolver(template, parameters or {}, stack=path.stem)
    found = functions(template, resolver, path.parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Path, list[str]]] = []
    skipped: list[tuple[str, str]] = []
    for mapping in mappings(resolver):
        resolver.assumed = set()
        try:
            converted = convert(mapping, found.get(mapping.function or ""), resolver, out_dir)
        except ConfigError as exc:
            skipped.append((mapping.name, exc.message))
            continue
        notes = converted.notes + sorted(resolver.assumed)
        for name, code in converted.modules:
            target = out_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(code, encoding="utf-8")
        file = out_dir / f"{converted.name}.yaml"
        file.write_text(_render(converted.document, notes, path), encoding="utf-8")
        written.append((file, notes))
    return ImportResult(written, skipped)


def _render(document: dict[str, Any], notes: Sequence[str], template: Path) -> str:
    header = [f"# Generated by `streamfn import {template.name}`."]
    if notes:
        header.append("# Not carried over, or carried over by assumption:")
        header += [f"#   - {note}" for note in notes]
    body = yaml.safe_dump(document, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return "\n".join(header) + "\n" + body
