"""The batches a live run formed, read back from the keys of the objects it wrote.

A keyed sink's template must name ``{shard_id}``, ``{first...}`` and ``{last...}`` (``keys.py``
refuses any other), so every object it holds says which shard and which records its batch
covered. ``streamfn replay`` forms exactly these batches again, so each one overwrites its own
object; the live run pays nothing for it (no batch log is written on the hot path).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..connectors.shared.keys import WINDOW_FINAL_MARK
from ..records import Position

Bounds = tuple[Position, Position]

_DIGITS = r"\d+"
_FIELD_PATTERNS: Mapping[str, str] = {
    "first": r"\d+(?:_\d+)?", "last": r"\d+(?:_\d+)?",
    "first_seq": _DIGITS, "last_seq": _DIGITS, "first_sub": _DIGITS, "last_sub": _DIGITS,
    "lane": _DIGITS, "year": _DIGITS, "month": _DIGITS, "day": _DIGITS, "hour": _DIGITS,
}


def key_pattern(template: str, *, pipeline: str, stream: str) -> re.Pattern[str]:
    """A regex matching every key ``template`` renders for this pipeline, with a group per field.

    A field named twice must repeat its first match; ``{pipeline}`` and ``{stream}`` match only
    this pipeline's names, so another pipeline's objects in the same folder are never taken.
    """
    parts: list[str] = []
    seen: set[str] = set()
    for literal, field, _spec, _conversion in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field is None:
            continue
        if field in seen:
            parts.append(f"(?P={field})")
            continue
        seen.add(field)
        if field == "pipeline":
            pattern = re.escape(pipeline)
        elif field == "stream":
            pattern = re.escape(stream)
        else:
            pattern = _FIELD_PATTERNS.get(field, r"[^/]+?")
        parts.append(f"(?P<{field}>{pattern})")
    return re.compile("".join(parts) + r"(?:\.gz)?")


def _position(groups: Mapping[str, str | Any], name: str) -> Position:
    text = groups.get(name)
    if text is not None:
        sequence, _, sub = text.partition("_")
        return Position(int(sequence), int(sub or 0))
    return Position(int(groups[f"{name}_seq"]), int(groups.get(f"{name}_sub") or 0))


def bounds_of(keys: Iterable[str], pattern: re.Pattern[str]) -> dict[str, list[Bounds]]:
    """Per shard, the sorted distinct bounds of the batches whose objects are ``keys``.

    A window's final output (keyed with ``.window-final``) is no batch of its own and is skipped.
    """
    found: dict[str, set[Bounds]] = {}
    for key in keys:
        if WINDOW_FINAL_MARK in key:
            continue
        match = pattern.fullmatch(key)
        if match is None:
            continue
        groups = match.groupdict()
        first, last = _position(groups, "first"), _position(groups, "last")
        if first <= last:
            found.setdefault(groups["shard_id"], set()).add((first, last))
    return {shard: sorted(bounds) for shard, bounds in found.items()}


def literal_prefix(template: str) -> str:
    """The template's text before its first field: where to start listing."""
    return template.split("{", 1)[0]


def local_keys(root: Path, prefix: str) -> list[str]:
    """Every object key under a local sink's root (temp files of unfinished writes excluded)."""
    base = root / prefix.rpartition("/")[0] if "/" in prefix else root
    if not base.is_dir():
        return []
    return [path.relative_to(root).as_posix() for path in base.rglob("*")
            if path.is_file() and not path.name.startswith(".tmp-")]


async def s3_keys(sink: Any, prefix: str) -> list[str]:
    """Every object key under ``prefix`` in an S3 sink's bucket (ListObjectsV2, page by page)."""
    from ..errors import SinkError

    keys: list[str] = []
    token: str | None = None
    while True:
        extra = {"ContinuationToken": token} if token else {}
        page = await sink.aws.call("list_objects_v2", SinkError, Bucket=sink.config.bucket, Prefix=prefix, **extra)
        keys.extend(item["Key"] for item in page.get("Contents", ()))
        if not page.get("IsTruncated"):
            return keys
        token = page["NextContinuationToken"]


async def recorded_batches(
    configs: Sequence[Any], sinks: Sequence[Any], *, pipeline: str, stream: str, lanes: int
) -> dict[str, list[Bounds]]:
    """Per shard, the bounds of every batch whose object a keyed sink holds (``sinks`` opened, built
    from ``configs`` in the same order).

    Sinks keyed alike agree. With one lane, bounds overlapping an earlier one (objects of another
    batching config) are dropped: one record can be formed into only one batch. With several lanes,
    lanes' batches interleave by design and all are kept.
    """
    from ..connectors.local.sink import LocalSink, LocalSinkConfig
    from ..connectors.s3.sink import S3Sink, S3SinkConfig

    merged: dict[str, set[Bounds]] = {}
    for config, sink in zip(configs, sinks, strict=True):
        if isinstance(config, LocalSinkConfig) and isinstance(sink, LocalSink):
            keys = local_keys(sink.root, literal_prefix(config.key))
        elif isinstance(config, S3SinkConfig) and isinstance(sink, S3Sink):
            keys = await s3_keys(sink, literal_prefix(config.key))
        else:
            continue
        for shard, bounds in bounds_of(keys, key_pattern(config.key, pipeline=pipeline, stream=stream)).items():
            merged.setdefault(shard, set()).update(bounds)
    if lanes > 1:
        return {shard: sorted(bounds) for shard, bounds in merged.items()}
    return {shard: disjoint(sorted(bounds)) for shard, bounds in merged.items()}


def disjoint(bounds: list[Bounds]) -> list[Bounds]:
    """Sorted bounds with any that overlaps an earlier one dropped (objects of an old bug or of a
    changed config): the engine can form only one batch per record."""
    kept: list[Bounds] = []
    for first, last in bounds:
        if kept and first <= kept[-1][1]:
            continue
        kept.append((first, last))
    return kept
