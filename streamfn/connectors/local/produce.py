"""Records for ``streamfn produce``: synthetic click events, or NDJSON lines from a file."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import BinaryIO

import orjson

_PAGES = ("/", "/search", "/cart", "/checkout", "/account", "/help", "/blog", "/pricing")
_REFERRERS = ("https://www.google.com/", "https://news.ycombinator.com/", "https://t.co/x", "", "direct")
_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0",
)
_COUNTRIES = ("US", "DE", "FR", "GB", "IN", "BR", "JP", "NL")


def synthetic_clicks(count: int, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """``count`` reproducible ~250-byte JSON click events keyed by ``user_id``."""
    rng = random.Random(seed)
    base_ts = 1_700_000_000.0
    users = max(10, count // 20)
    for i in range(count):
        user_id = f"user-{rng.randrange(users):06d}"
        event = {
            "event": "click",
            "user_id": user_id,
            "session": f"{rng.getrandbits(64):016x}",
            "page": rng.choice(_PAGES),
            "referrer": rng.choice(_REFERRERS),
            "ts": round(base_ts + i * 0.01, 3),
            "country": rng.choice(_COUNTRIES),
            "user_agent": rng.choice(_AGENTS),
            "latency_ms": rng.randrange(5, 900),
            "seq": i,
        }
        yield user_id, orjson.dumps(event)


def ndjson_records(stream: BinaryIO, key_field: str | None = None) -> Iterator[tuple[str, bytes]]:
    """One record per non-blank line; the key is ``key_field``'s value, else a line counter.

    A line that is not valid JSON, or lacks ``key_field``, raises ValueError naming its line number.
    """
    counter = 0
    for number, raw in enumerate(stream, start=1):
        line = raw.strip()
        if not line:
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"line {number}: not valid JSON: {exc}") from None
        if key_field is None:
            key = str(counter)
        else:
            if not isinstance(value, dict) or key_field not in value:
                raise ValueError(f"line {number}: no field {key_field!r} for the partition key")
            key = str(value[key_field])
        counter += 1
        yield key, line
