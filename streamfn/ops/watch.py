"""``streamfn status --watch``: a per-shard table refreshed in the terminal, in the manner of ``vector top``.

Everything comes from a running daemon's ``/metrics`` (only HTTP GETs: nothing is read from or
written to the pipelines' state); records/s is the change of the handled counter between scrapes.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import TextIO

import msgspec
from prometheus_client.parser import text_string_to_metric_families

#: Move the cursor home and clear the screen: each frame replaces the last.
CLEAR = "\x1b[H\x1b[2J"

Key = tuple[str, str]  # (pipeline, shard)


class Sample(msgspec.Struct, frozen=True, kw_only=True):
    """One shard in one scrape."""

    handled: float = 0.0
    failed: float = 0.0
    retries: float = 0.0
    write_errors: float = 0.0
    iterator_age: float | None = None
    lag: float | None = None
    blocked_seconds: float = 0.0
    attempt: int = 0


class Scrape(msgspec.Struct, frozen=True):
    at: float
    shards: dict[Key, Sample]


_FIELDS = {
    "streamfn_records_handled_total": "handled", "streamfn_records_failed_total": "failed",
    "streamfn_retries_total": "retries", "streamfn_iterator_age_seconds": "iterator_age",
    "streamfn_checkpoint_lag_records": "lag", "streamfn_shard_blocked_seconds": "blocked_seconds",
    "streamfn_attempt": "attempt",
}


def parse(text: str, at: float) -> Scrape:
    """The per-shard samples in a /metrics text (write errors summed over targets and kinds)."""
    values: dict[Key, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "shard" not in sample.labels:
                continue
            key = (sample.labels.get("pipeline", ""), sample.labels["shard"])
            fields = values.setdefault(key, {})
            if sample.name == "streamfn_write_errors_total":
                fields["write_errors"] = fields.get("write_errors", 0.0) + sample.value
            elif sample.name in _FIELDS:
                fields[_FIELDS[sample.name]] = sample.value
    return Scrape(at, {key: msgspec.convert(fields, Sample, strict=False) for key, fields in values.items()})


def scrape(url: str, timeout: float = 2.0) -> Scrape | None:
    """One scrape of ``url``/metrics; None when no daemon answers."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=timeout) as response:
            return parse(response.read().decode(), time.monotonic())
    except (OSError, ValueError):
        return None


def rates(previous: Scrape | None, current: Scrape) -> dict[Key, float | None]:
    """Records handled per second since ``previous`` (None for a shard not in it, or a counter that
    went back: the daemon restarted)."""
    found: dict[Key, float | None] = {}
    for key, sample in current.shards.items():
        before = None if previous is None else previous.shards.get(key)
        elapsed = 0.0 if previous is None else current.at - previous.at
        if before is None or elapsed <= 0 or sample.handled < before.handled:
            found[key] = None
        else:
            found[key] = (sample.handled - before.handled) / elapsed
    return found


def render(current: Scrape | None, speeds: Mapping[Key, float | None], *, url: str, clock: str) -> str:
    """One frame: a title line and the table (or why there is none). ERRORS counts failed attempts
    (handler errors, timeouts, failed writes: each one retried) and records given up on."""
    title = f"streamfn status --watch  {url}  {clock}  (Ctrl-C to quit)"
    if current is None:
        return f"{title}\n\nno daemon answered at {url}/metrics: is it running with --metrics-port?\n"
    header = ("PIPELINE", "SHARD", "REC/S", "LAG", "ITER AGE", "BLOCKED", "ERRORS")
    lines = [header]
    for key in sorted(current.shards):
        s = current.shards[key]
        speed = speeds.get(key)
        lines.append((
            key[0], key[1], "-" if speed is None else f"{speed:,.0f}",
            "-" if s.lag is None else f"{s.lag:,.0f}",
            "-" if s.iterator_age is None else f"{s.iterator_age:.1f}s",
            f"YES {s.blocked_seconds:.0f}s (attempt {s.attempt})" if s.blocked_seconds > 0 else "no",
            f"{s.retries + s.failed:,.0f}",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    table = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                      for line in lines)
    return f"{title}\n\n{table}\n" + ("" if current.shards else "(no shards running yet)\n")


def watch(url: str, *, interval: float, out: TextIO, frames: int | None = None,
          sleep: Callable[[float], None] = time.sleep) -> None:
    """Scrape and redraw every ``interval`` seconds until interrupted (or ``frames`` were drawn)."""
    previous: Scrape | None = None
    drawn = 0
    while frames is None or drawn < frames:
        current = scrape(url)
        speeds = {} if current is None else rates(previous, current)
        frame = render(current, speeds, url=url, clock=time.strftime("%H:%M:%S"))
        out.write((CLEAR if out.isatty() else "") + frame + ("" if out.isatty() else "\n"))
        out.flush()
        previous = current if current is not None else previous
        drawn += 1
        if frames is None or drawn < frames:
            sleep(interval)
