"""A strict logfmt parser for tests: ``key=value`` pairs separated by single spaces, values bare or
double-quoted with backslash escapes (``\\"``, ``\\\\``, ``\\n``, ``\\t``, ``\\uXXXX``)."""

from __future__ import annotations

import re

_KEY = re.compile(r"[A-Za-z0-9_.\-]+")
_BARE = re.compile(r"[^\s\"=\\]+")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


def parse_logfmt(line: str) -> dict[str, str]:
    """The pairs of one line; raises ValueError on anything that is not valid logfmt."""
    pairs: dict[str, str] = {}
    at = 0
    while at < len(line):
        key = _KEY.match(line, at)
        if key is None or key.end() >= len(line) or line[key.end()] != "=":
            raise ValueError(f"expected key= at {at}: {line!r}")
        at = key.end() + 1
        if at < len(line) and line[at] == '"':
            value, at = _quoted(line, at + 1)
        else:
            bare = _BARE.match(line, at)
            if bare is None:
                raise ValueError(f"empty or invalid bare value at {at}: {line!r}")
            value, at = bare.group(), bare.end()
        if key.group() in pairs:
            raise ValueError(f"duplicate key {key.group()!r}: {line!r}")
        pairs[key.group()] = value
        if at < len(line):
            if line[at] != " " or at + 1 == len(line):
                raise ValueError(f"expected one space between pairs at {at}: {line!r}")
            at += 1
    return pairs


def _quoted(line: str, at: int) -> tuple[str, int]:
    out: list[str] = []
    while at < len(line):
        char = line[at]
        if char == '"':
            return "".join(out), at + 1
        if char == "\\":
            escape = line[at + 1: at + 2]
            if escape == "u":
                out.append(chr(int(line[at + 2: at + 6], 16)))
                at += 6
                continue
            if escape not in _ESCAPES:
                raise ValueError(f"bad escape \\{escape} in {line!r}")
            out.append(_ESCAPES[escape])
            at += 2
            continue
        if ord(char) < 0x20:
            raise ValueError(f"raw control character in a quoted value: {line!r}")
        out.append(char)
        at += 1
    raise ValueError(f"unterminated quoted value: {line!r}")
