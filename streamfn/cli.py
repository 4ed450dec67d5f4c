"""The ``streamfn`` command: thin verbs over the engine."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from . import logs
from .config import LoadedPipeline, json_schema, load_pipeline
from .errors import ConfigError, HandlerLoadError, StreamfnError

if TYPE_CHECKING:
    from .metrics import MetricsConfig

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _load_all(paths: Sequence[str]) -> list[LoadedPipeline]:
    return [load_pipeline(path) for path in paths]


def cmd_run(args: argparse.Namespace) -> int:
    from .engine.daemon import install_event_loop_policy, run_pipelines

    loaded = _load_all(args.configs)
    install_event_loop_policy()
    asyncio.run(run_pipelines(loaded, until_caught_up=args.until_caught_up, metrics=_metrics_config(args, loaded)))
    return EXIT_OK


def _metrics_config(args: argparse.Namespace, loaded: Sequence[LoadedPipeline]) -> MetricsConfig | None:
    """``--metrics-port`` wins; else the first pipeline file whose ``[metrics]`` section is enabled."""
    from .metrics import MetricsConfig

    if args.metrics_port is not None:
        return MetricsConfig(enabled=True, host=args.metrics_host, port=args.metrics_port)
    for item in loaded:
        section = getattr(item.config, "metrics", None)
        if isinstance(section, MetricsConfig) and section.enabled:
            return section
    return None


def cmd_validate(args: argparse.Namespace) -> int:
    from .engine.invoke import load_handler

    failed = 0
    for path in args.configs:
        try:
            loaded = load_pipeline(path)
            ctx = loaded.context
            load_handler(loaded.config.handler, [ctx.config_dir, Path.cwd()])
        except StreamfnError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
        else:
            print(f"ok: {path} (pipeline {loaded.config.name!r})")
    return EXIT_FAILED if failed else EXIT_OK


def cmd_produce(args: argparse.Namespace) -> int:
    from .produce import produce

    loaded = load_pipeline(args.config)
    produce(loaded, count=args.count, source_file=args.input, key_field=args.key_field, seed=args.seed,
            progress=not args.quiet)
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    sys.stdout.write(orjson.dumps(json_schema(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamfn", description=__doc__)
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    parser.add_argument("--log-level", default="INFO")
    verbs = parser.add_subparsers(dest="verb", required=True)

    run = verbs.add_parser("run", help="run pipelines as a daemon until SIGTERM/SIGINT")
    run.add_argument("configs", nargs="+")
    run.add_argument("--until-caught-up", action="store_true", help="exit 0 once every shard is drained")
    run.add_argument("--metrics-port", type=int, default=None, help="serve /metrics, /healthz, /readyz on this port")
    run.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port (default 127.0.0.1)")
    run.set_defaults(func=cmd_run)

    validate = verbs.add_parser("validate", help="check pipeline files and that their handlers import")
    validate.add_argument("configs", nargs="+")
    validate.set_defaults(func=cmd_validate)

    produce = verbs.add_parser("produce", help="append records to a pipeline's local log")
    produce.add_argument("config")
    produce.add_argument("--count", type=int, default=None, help="synthetic click events to append")
    produce.add_argument("--input", default=None, help="NDJSON file to append ('-' for stdin)")
    produce.add_argument("--key-field", default=None, help="JSON field used as partition key (NDJSON input)")
    produce.add_argument("--seed", type=int, default=0)
    produce.add_argument("--quiet", action="store_true")
    produce.set_defaults(func=cmd_produce)

    schema = verbs.add_parser("schema", help="print the JSON Schema of pipeline files")
    schema.set_defaults(func=cmd_schema)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_format, args.log_level)
    try:
        return int(args.func(args))
    except (ConfigError, HandlerLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StreamfnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
