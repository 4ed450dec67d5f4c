"""What a pipeline's config makes of a handler in processes: the slot factory, and the checks at start."""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import LoadedPipeline
from ..errors import ConfigError

if TYPE_CHECKING:
    from .slot import ProcessSlots


def process_slots(loaded: LoadedPipeline) -> ProcessSlots | None:
    """The slot factory of a pipeline whose handler runs in processes; None for in-process handlers
    (which then need no ``runtime`` extra: the server's modules are imported only here)."""
    config, ctx = loaded.config, loaded.context
    if config.interface != "runtime-api" and config.isolation != "process":
        return None
    from .slot import LambdaJson, ProcessSlots, RuntimeSpec, WorkerMsgpack

    if config.interface == "runtime-api":
        return ProcessSlots(RuntimeSpec(
            pipeline=config.name, command=list(config.command), handler=config.handler,
            task_root=ctx.config_dir, cwd=ctx.config_dir, codec=LambdaJson(), memory_limit_mb=config.memory_limit_mb,
        ))
    cwd = Path.cwd()
    command = [sys.executable, "-m", "streamfn.runtime.worker", config.handler,
               "--search-dir", str(ctx.config_dir), "--search-dir", str(cwd)]
    return ProcessSlots(RuntimeSpec(
        pipeline=config.name, command=command, handler=config.handler, task_root=ctx.config_dir, cwd=cwd,
        codec=WorkerMsgpack(), memory_limit_mb=config.memory_limit_mb, extra_env={"PYTHONUNBUFFERED": "1"},
    ))


def check_start(loaded: LoadedPipeline) -> bool:
    """What ``run`` and ``validate`` can check of a handler that runs in processes, without running it:
    the runtime's command can be found, or the worker's module exists. False: the handler is imported
    in streamfn's own process, so the caller checks it by importing it."""
    config, ctx = loaded.config, loaded.context
    if config.interface == "runtime-api":
        program = config.command[0]
        path = ctx.config_dir / program
        found = os.access(path, os.X_OK) and path.is_file() if "/" in program else shutil.which(program)
        if not found:
            hint = f"; did you mean './{program}'?" if "/" not in program and path.is_file() else ""
            raise ConfigError(f"cannot find the runtime's program {program!r} (on PATH, or relative to "
                              f"{ctx.config_dir} when it has a '/'), or it is not executable{hint}",
                              file=str(loaded.path), field="command")
        return True
    if config.isolation != "process":
        return False
    module, sep, function = config.handler.partition(":")
    if not sep or not module or not function:
        raise ConfigError(f"handler {config.handler!r} must look like 'module:function'",
                          file=str(loaded.path), field="handler")
    search = [str(ctx.config_dir), str(Path.cwd())]
    try:
        spec = importlib.machinery.PathFinder.find_spec(module.split(".", 1)[0], search + sys.path)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ConfigError(f"handler {config.handler!r}: no module {module!r} in {search[0]} or {search[1]}",
                          file=str(loaded.path), field="handler")
    return True
