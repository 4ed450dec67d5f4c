"""Object keys derived from a batch's bounds, so that a replayed batch lands on the same key."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from ...errors import ConfigError
from ...paths import key_problem
from ...protocols.sink import SinkBatch
from ...records import Position

DEFAULT_TEMPLATE = "{pipeline}/{shard_id}/{first}-{last}.ndjson"

_EXAMPLE = SinkBatch(
    pipeline="p", stream="s", shard_id="shard-0000", first=Position(1), last=Position(2),
    first_arrival=0.0, items=[],
)


def position_text(position: Position) -> str:
    """Zero-padded so keys sort in shard order; a KPL sub-sequence is appended when present."""
    text = f"{position.sequence:020d}"
    return f"{text}_{position.sub_sequence:05d}" if position.sub_sequence else text


def key_fields(batch: SinkBatch) -> dict[str, Any]:
    """The names a key template may use."""
    moment = datetime.fromtimestamp(batch.first_arrival, tz=UTC)
    return {
        "pipeline": batch.pipeline,
        "stream": batch.stream,
        "shard_id": batch.shard_id,
        "lane": batch.lane,
        "first": position_text(batch.first),
        "last": position_text(batch.last),
        "first_seq": batch.first.sequence,
        "last_seq": batch.last.sequence,
        "first_sub": batch.first.sub_sequence,
        "last_sub": batch.last.sub_sequence,
        "year": f"{moment.year:04d}",
        "month": f"{moment.month:02d}",
        "day": f"{moment.day:02d}",
        "hour": f"{moment.hour:02d}",
    }


#: Marks the key of a window's final output, inserted before the object's extension.
WINDOW_FINAL_MARK = ".window-final"


def render_key(template: str, batch: SinkBatch) -> str:
    key = template.format(**key_fields(batch))
    if batch.window_final:
        key = _mark(key, WINDOW_FINAL_MARK)
    return key


def _mark(key: str, mark: str) -> str:
    """``key`` with ``mark`` before the extension of its last path segment (or at its end)."""
    folder, slash, name = key.rpartition("/")
    stem, dot, extension = name.partition(".")
    return f"{folder}{slash}{stem}{mark}{dot}{extension}"


def check_template(template: str, field: str, *, pipeline: str | None = None, stream: str | None = None) -> None:
    """Fail at config time on an unknown name, on a template that cannot be deterministic, and on
    one that could leave the sink's root (a leading ``/``, a ``..`` segment).

    ``pipeline`` and ``stream``, when known, are rendered as they will be, so a name that would
    form a ``..`` segment with the template's text is refused here rather than at the first write.
    """
    example = _EXAMPLE
    if pipeline is not None:
        example = msgspec.structs.replace(example, pipeline=pipeline)
    if stream is not None:
        example = msgspec.structs.replace(example, stream=stream)
    try:
        rendered = render_key(template, example)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"bad key template {template!r}: {exc!r}; names: {sorted(key_fields(_EXAMPLE))}",
                          field=field) from None
    if "{first" not in template or "{last" not in template or "{shard_id}" not in template:
        raise ConfigError(
            f"key template {template!r} must contain {{shard_id}}, {{first...}} and {{last...}} "
            "so that a replayed batch overwrites its own object",
            field=field,
        )
    problem = key_problem(rendered)
    if problem is not None:
        raise ConfigError(f"key template {template!r}: {problem}; keys are relative paths inside the sink's root",
                          field=field)
