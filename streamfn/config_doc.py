"""What a pipeline file may say beyond the config classes' own declarations: Lambda's spellings of
starting positions, a description on every ``type`` tag, and the allowed values an enum error lists.

The config classes stay the one declaration (fields, defaults, descriptions); this module only
reads the JSON Schema they produce, so it needs no list of connectors.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

#: Lambda's ``StartingPosition`` values, as each place that takes a starting position spells them.
LAMBDA_STARTING_POSITIONS: dict[str, dict[str, str]] = {
    "pipeline": {"TRIM_HORIZON": "trim_horizon", "LATEST": "latest", "AT_TIMESTAMP": "at_timestamp"},
    "kafka": {"TRIM_HORIZON": "earliest", "LATEST": "latest", "AT_TIMESTAMP": "at_timestamp"},
}

_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def accept_lambda_spellings(document: Mapping[str, Any]) -> dict[str, Any]:
    """``document`` with Lambda's ``TRIM_HORIZON``/``LATEST``/``AT_TIMESTAMP`` turned into streamfn's
    spellings, at the top level and in a Kafka source (where ``TRIM_HORIZON`` is ``earliest``)."""
    out = dict(document)
    spelled = LAMBDA_STARTING_POSITIONS["pipeline"]
    if isinstance(out.get("starting_position"), str):
        out["starting_position"] = spelled.get(out["starting_position"], out["starting_position"])
    source = out.get("source")
    if isinstance(source, Mapping) and source.get("type") == "kafka" and isinstance(source.get("starting_position"),
                                                                                    str):
        kafka = LAMBDA_STARTING_POSITIONS["kafka"]
        out["source"] = {**source, "starting_position": kafka.get(source["starting_position"],
                                                                  source["starting_position"])}
    return out


def document_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with each ``type`` tag described (by its class's docstring) and Lambda's starting
    position spellings listed where they are accepted."""
    schema = copy.deepcopy(schema)
    for definition in schema.get("$defs", {}).values():
        properties = definition.get("properties", {})
        tag = properties.get("type")
        if tag is not None and "description" not in tag and len(tag.get("enum", ())) == 1:
            what = definition.get("title") or definition.get("description") or ""
            tag["description"] = f"`{tag['enum'][0]}`: {what}".rstrip(": ")
        position = properties.get("starting_position")
        if position is not None:
            for alternative in [position, *position.get("anyOf", [])]:
                if "enum" in alternative:
                    alternative["enum"] = [*alternative["enum"], *LAMBDA_STARTING_POSITIONS["pipeline"]]
    return schema


def allowed_values(schema: dict[str, Any], field: str, document: Any) -> list[Any]:
    """The values the schema allows at ``field`` (``sinks[1].type``), choosing among tagged
    alternatives by the document's own ``type`` values; [] when the field is no enum."""
    definitions = schema.get("$defs", {})
    candidates = _expand(schema, definitions)
    value = document
    for name, index in _PATH_PART.findall(field):
        step: list[dict[str, Any]] = []
        for node in candidates:
            child = node.get("items") if index else node.get("properties", {}).get(name)
            if child is not None:
                step.append(child)
        value = _child(value, name, index)
        candidates = _narrow(_expand_all(step, definitions), value)
    found: list[Any] = []
    for node in candidates:
        for choice in node.get("enum", ()):
            if choice not in found:
                found.append(choice)
    return found


def explain_choices(message: str, field: str | None, schema: dict[str, Any], document: Any) -> str:
    """msgspec's message for an invalid enum or tag value, with the allowed values appended."""
    if field is None or not message.startswith(("Invalid enum value", "Invalid value")):
        return message
    choices = allowed_values(schema, field, document)
    if not choices:
        return message
    return f"{message}: expected one of " + ", ".join(repr(choice) for choice in choices)


def _child(value: Any, name: str, index: str) -> Any:
    if index:
        return value[int(index)] if isinstance(value, list) and int(index) < len(value) else None
    return value.get(name) if isinstance(value, Mapping) else None


def _narrow(candidates: list[dict[str, Any]], value: Any) -> list[dict[str, Any]]:
    """The alternatives whose ``type`` tag is the document's, when it names one of them."""
    if not isinstance(value, Mapping) or "type" not in value:
        return candidates
    chosen = [c for c in candidates if value["type"] in c.get("properties", {}).get("type", {}).get("enum", ())]
    return chosen or candidates


def _expand_all(nodes: list[dict[str, Any]], definitions: dict[str, Any]) -> list[dict[str, Any]]:
    return [expanded for node in nodes for expanded in _expand(node, definitions)]


def _expand(node: dict[str, Any], definitions: dict[str, Any]) -> list[dict[str, Any]]:
    """``node`` with references followed and unions spread into their alternatives."""
    if "$ref" in node:
        return _expand(definitions[node["$ref"].rsplit("/", 1)[-1]], definitions)
    if "anyOf" in node:
        return _expand_all(node["anyOf"], definitions)
    return [node]
