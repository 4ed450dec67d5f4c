"""``${VAR}`` and ``${VAR:-default}`` in config values, resolved from the environment."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\$")


class MissingVariable(Exception):
    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = path
        super().__init__(f"environment variable {name} is not set (and no ${{{name}:-default}} was given)")


def interpolate(value: Any, env: Mapping[str, str], path: str = "") -> Any:
    """Replace variables in every string inside ``value``; ``$$`` stands for a literal ``$``."""
    if isinstance(value, str):
        return _substitute(value, env, path)
    if isinstance(value, dict):
        return {k: interpolate(v, env, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _substitute(text: str, env: Mapping[str, str], path: str) -> str:
    if "$" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in env and (env[name] != "" or default is None):
            return env[name]
        if default is not None:
            return default
        raise MissingVariable(name, path)

    return _VARIABLE.sub(replace, text)
