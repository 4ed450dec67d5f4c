"""CloudFormation templates as data: YAML short forms read, intrinsic functions resolved where the
template alone says what they are (parameters, mappings, names of its own resources).

A value known only once deployed (a DynamoDB stream's label, a queue's URL) resolves to
:class:`Unresolved`, with what is known anyway as its ``hint``; callers name it instead of guessing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

#: Pseudo parameters a template alone cannot know; these stand-ins are named in every file using them.
PSEUDO = {"AWS::Region": "us-east-1", "AWS::AccountId": "000000000000", "AWS::Partition": "aws",
          "AWS::URLSuffix": "amazonaws.com", "AWS::NoValue": None}
_SUB = re.compile(r"\$\{(!?)([^}]*)\}")


class Unresolved:
    """A value the template alone cannot give (an attribute known only once deployed)."""

    def __init__(self, why: str, hint: Any = None) -> None:
        self.why = why
        #: What is known anyway (a table's name for its stream ARN).
        self.hint = hint

    def __repr__(self) -> str:
        return f"Unresolved({self.why!r})"


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
