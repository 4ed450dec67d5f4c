"""The environment a Lambda runtime process gets, as Lambda sets it, on top of streamfn's own."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path

#: Lambda's default memory size, reported when no ``memory_limit_mb`` is set.
DEFAULT_MEMORY_MB = 128


def lambda_environment(
    *,
    api: str,
    function_name: str,
    handler: str,
    task_root: Path,
    log_stream: str,
    memory_limit_mb: int,
    version: str = "$LATEST",
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """streamfn's environment (credentials, PATH...) with Lambda's reserved variables set over it."""
    env = dict(os.environ if base is None else base)
    env.update({
        "AWS_LAMBDA_RUNTIME_API": api,
        "AWS_LAMBDA_FUNCTION_NAME": function_name,
        "AWS_LAMBDA_FUNCTION_VERSION": version,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_limit_mb or DEFAULT_MEMORY_MB),
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/streamfn/{function_name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": log_stream,
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "_HANDLER": handler,
        "LAMBDA_TASK_ROOT": str(task_root),
        "LAMBDA_RUNTIME_DIR": str(task_root),
        "TZ": ":UTC",
    })
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        env.setdefault("AWS_REGION", region)
        env.setdefault("AWS_DEFAULT_REGION", region)
    return env


def trace_id() -> str:
    """An X-Ray trace header, as ``Lambda-Runtime-Trace-Id`` carries it (not sampled: nothing traces it)."""
    return f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)};Parent={secrets.token_hex(8)};Sampled=0"
