"""``streamfn init``: write a commented starter pipeline and its handler, ready to run locally."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ConfigError

PIPELINE = '''\
# A streamfn pipeline: a sharded source, your handler, where its output goes, what to do on failure.
# Try it without any server (the embedded local log):
#
#   streamfn produce {config} --count 10000       # append synthetic click events
#   streamfn run {config} --until-caught-up        # handle them, then exit
#   streamfn status {config}                       # checkpoints and lag per shard
#
# Strings may use ${{VAR}} or ${{VAR:-default}}. `streamfn schema` prints every field.
name = "{name}"
handler = "{module}:handle"                   # module:function, looked up beside this file
state_dir = "state"                           # local log and checkpoints live here
interface = "native"                          # or "lambda" for an unmodified AWS Lambda handler
starting_position = "trim_horizon"            # where a shard without a checkpoint starts: or "latest"
timeout = 60.0                                # seconds a call may take before it counts as failed
# parallelization_factor = 1                  # concurrent batches per shard (per-key order holds)
# report_batch_item_failures = false          # let the handler return the records that failed

[source]
type = "local"                                # the embedded log; swap for your stream's source
stream = "events"
shards = 4

[batching]
max_records = 100                             # call the handler with at most this many records
window = 0.0                                  # seconds to gather records before a call

[retry]                                       # by default a failing batch is retried until it succeeds
initial_delay = 0.5
max_delay = 30.0
# max_attempts = 3                            # then send the batch to on_failure (needs on_failure)
# bisect_on_error = true                      # split a failing batch to isolate a poison record

# [on_failure]                                # where given-up batches go, with their metadata
# type = "local"
# path = "failed"

[[sinks]]                                     # the handler's returned items, one object per batch
type = "local"
path = "out"                                  # a folder laid out like an S3 bucket
'''

HANDLER = '''\
"""The handler of the {name} pipeline: called once per batch of one shard, in shard order."""

from typing import Any

from streamfn import Batch, Context


def handle(batch: Batch, context: Context) -> list[dict[str, Any]]:
    # Return items for the sinks; raise to have the whole batch retried.
    return [
        {{"shard": record.shard_id, "sequence": record.sequence, "key": record.partition_key,
          "event": record.json()}}
        for record in batch
    ]
'''


def write_starter(folder: Path, *, name: str = "my-pipeline", force: bool = False) -> list[Path]:
    """Write ``pipeline.toml`` and its handler module into ``folder``; returns the files written."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", name):
        raise ConfigError(f"pipeline name {name!r}: use a letter, then letters, digits, '.', '_' or '-'")
    module = name.replace("-", "_").replace(".", "_") + "_handler"
    config, handler = folder / "pipeline.toml", folder / f"{module}.py"
    existing = [path for path in (config, handler) if path.exists()]
    if existing and not force:
        raise ConfigError(f"{', '.join(str(p) for p in existing)} already exist(s); use --force to overwrite")
    folder.mkdir(parents=True, exist_ok=True)
    config.write_text(PIPELINE.format(name=name, module=module, config=config), encoding="utf-8")
    handler.write_text(HANDLER.format(name=name), encoding="utf-8")
    return [config, handler]


def next_steps(config: Path) -> str:
    """What to type after ``init``, with the path just written."""
    return (f"\nNext steps:\n"
            f"  streamfn validate {config}                  # check the file and that the handler imports\n"
            f"  streamfn produce {config} --count 10000     # append synthetic click events to the local log\n"
            f"  streamfn run {config} --until-caught-up     # handle them, then exit (output in out/)\n"
            f"  streamfn status {config}                    # checkpoints and lag per shard\n"
            f"Then edit the handler and swap [source] for your stream (`streamfn schema` lists every field).")
