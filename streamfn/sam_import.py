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

from .errors import ConfigError

EVENT_TYPES = ("Kinesis", "DynamoDB", "MSK", "SelfManagedKafka")
FUNCTION_TYPES = ("AWS::Serverless::Function", "AWS::Lambda::Function")
#: Pseudo parameters a template alone cannot know; these stand-ins are named in every file using them.
PSEUDO = {"AWS::Region": "us-east-1", "AWS::AccountId": "000000000000", "AWS::Partition": "aws",
          "AWS::URLSuffix": "amazonaws.com", "AWS::NoValue": None}
#: Lambda's default function timeout, used when neither the function nor Globals set one.
LAMBDA_DEFAULT_TIMEOUT = 3
_SUB = re.compile(r"\$\{(!?)([^}]*)\}")


class Unresolved:
    """A value the template alone cannot give (an attribute known only once deployed)."""

    def __init__(self, why: str, hint: Any = None) -> None:
        self.why = why
        #: What is known anyway (a table's name for its stream ARN).
        self.hint = hint

    def __repr__(self) -> str:
        return f"Unresolved({self.why!r})"


# -- reading templates -------------------------------------------------------------------
class _TemplateLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short forms (``!Ref``, ``!GetAtt``, ``!Sub``...) as their long forms."""


def _short_form(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    if suffix == "Condition":
        return {"Condition": value}
    return {f"Fn::{suffix}": value}


_TemplateLoader.add_multi_constructor("!", _short_form)


def load_template(path: Path) -> dict[str, Any]:
    """A template file (YAML with short forms, or JSON) as plain data."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from None
    try:
        # YAML through a SafeLoader with CloudFormation's tags added; JSON is YAML too, but slower.
        document = json.loads(text) if text.lstrip().startswith("{") else yaml.load(text, Loader=_TemplateLoader)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"not a valid template: {exc}", file=str(path)) from None
    if not isinstance(document, dict) or not isinstance(document.get("Resources"), dict):
        raise ConfigError("not a CloudFormation template: no Resources section", file=str(path))
    return document


# -- intrinsic functions -----------------------------------------------------------------
class Resolver:
    """Resolves intrinsic functions against a template's parameters, mappings and resources."""

    def __init__(self, template: Mapping[str, Any], parameters: Mapping[str, str], stack: str) -> None:
        self.resources: dict[str, Any] = template.get("Resources") or {}
        self.mappings: dict[str, Any] = template.get("Mappings") or {}
        self.parameters: dict[str, Any] = {}
        self.assumed: set[str] = set()
        for name, spec in (template.get("Parameters") or {}).items():
            if name in parameters:
                self.parameters[name] = parameters[name]
            elif isinstance(spec, dict) and "Default" in spec:
                self.parameters[name] = spec["Default"]
        self.pseudo = {**PSEUDO, "AWS::StackName": stack}

    def resolve(self, value: Any) -> Any:
        """``value`` with every intrinsic resolved; an Unresolved where one cannot be."""
        if isinstance(value, list):
            return [self.resolve(item) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref":
                return self._ref(arg)
            if key.startswith("Fn::"):
                return self._function(key[4:], arg)
        return {key: self.resolve(item) for key, item in value.items()}

    def _function(self, name: str, arg: Any) -> Any:
        if name == "GetAtt":
            parts = arg.split(".", 1) if isinstance(arg, str) else list(arg)
            return self._get_att(str(parts[0]), str(parts[1]) if len(parts) > 1 else "")
        if name == "Sub":
            return self._sub(arg)
        if name == "Join":
            separator, items = arg
            resolved = self.resolve(items)
            if isinstance(resolved, Unresolved) or any(isinstance(i, Unresolved) for i in resolved):
                return Unresolved("Fn::Join of an unresolved value")
            return str(separator).join(str(i) for i in resolved)
        if name == "Select":
            index, items = self.resolve(arg[0]), self.resolve(arg[1])
            if isinstance(items, list) and str(index).isdigit() and int(index) < len(items):
                return items[int(index)]
            return Unresolved("Fn::Select out of range or unresolved")
        if name == "FindInMap":
            table, first, second = (self.resolve(a) for a in arg[:3])
            try:
                return self.mappings[table][first][second]
            except (KeyError, TypeError):
                return Unresolved(f"Fn::FindInMap {table}/{first}/{second} not in Mappings")
        return Unresolved(f"Fn::{name} is not resolved by streamfn import")

    def _ref(self, name: str) -> Any:
        if name in self.parameters:
            return self.parameters[name]
        if name in self.pseudo:
            if name in ("AWS::Region", "AWS::AccountId"):
                self.assumed.add(f"{name} taken as {self.pseudo[name]!r}")
            return self.pseudo[name]
        resource = self.resources.get(name)
        if not isinstance(resource, dict):
            return Unresolved(f"Ref {name}: no such parameter or resource")
        kind, props = resource.get("Type", ""), resource.get("Properties") or {}
        physical = self._physical_name(name, kind, props)
        if kind == "AWS::SNS::Topic":
            return self._arn("sns", physical)
        if kind == "AWS::SQS::Queue":
            return Unresolved(f"Ref {name} is the queue's URL, known once deployed", hint={"queue": physical})
        return physical

    def _get_att(self, name: str, attribute: str) -> Any:
        resource = self.resources.get(name)
        if not isinstance(resource, dict):
            return Unresolved(f"GetAtt {name}.{attribute}: no such resource")
        kind, props = resource.get("Type", ""), resource.get("Properties") or {}
        physical = self._physical_name(name, kind, props)
        if kind == "AWS::Kinesis::Stream" and attribute == "Arn":
            return self._arn("kinesis", f"stream/{physical}")
        if kind == "AWS::DynamoDB::Table" and attribute == "StreamArn":
            return Unresolved(f"{name}.StreamArn is known once deployed", hint={"table": physical})
        if kind == "AWS::SQS::Queue" and attribute == "Arn":
            # The queue's name finds it in the account and region streamfn runs in: an ARN built from
            # stand-in pseudo parameters would not.
            return Unresolved(f"{name}.Arn is known once deployed", hint={"queue": physical})
        if kind == "AWS::SNS::Topic" and attribute in ("TopicArn", "Arn"):
            return self._arn("sns", physical)
        if kind == "AWS::S3::Bucket" and attribute == "Arn":
            return f"arn:aws:s3:::{physical}"
        if kind == "AWS::Kinesis::StreamConsumer" and attribute in ("ConsumerARN", "StreamARN"):
            return self.resolve(props.get("StreamARN"))
        return Unresolved(f"GetAtt {name}.{attribute} is known once deployed")

    def _sub(self, arg: Any) -> Any:
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))
        missing: list[str] = []

        def replace(match: re.Match[str]) -> str:
            if match.group(1):
                return "${" + match.group(2) + "}"
            name = match.group(2)
            if name in variables:
                value = variables[name]
            elif "." in name and name.split(".", 1)[0] in self.resources:
                value = self._get_att(*name.split(".", 1))
            else:
                value = self._ref(name)
            if isinstance(value, Unresolved) or value is None:
                missing.append(name)
                return match.group(0)
            return str(value)

        result = _SUB.sub(replace, text)
        return Unresolved(f"Fn::Sub: {', '.join(missing)} unresolved") if missing else result

    def _arn(self, service: str, resource: str) -> str:
        region, account = self._ref("AWS::Region"), self._ref("AWS::AccountId")
        return f"arn:aws:{service}:{region}:{account}:{resource}"

    def _physical_name(self, logical: str, kind: str, props: Mapping[str, Any]) -> str:
        key = {"AWS::Kinesis::Stream": "Name", "AWS::DynamoDB::Table": "TableName", "AWS::SQS::Queue": "QueueName",
               "AWS::SNS::Topic": "TopicName", "AWS::S3::Bucket": "BucketName"}.get(kind)
        named = self.resolve(props.get(key)) if key else None
        if isinstance(named, str):
            return named
        self.assumed.add(f"{logical} has no fixed name: its logical id is used as its name")
        return logical


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
            function = _function_id(props.get("FunctionName"), resolver)
            yield StreamMapping(logical_id, function, _esm_kind(props, resolver), props)


def _function_id(ref: Any, resolver: Resolver) -> str | None:
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
