"""The ``streamfn`` command: thin verbs over the engine."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

import msgspec
import orjson

from . import __version__, logs
from .config import LoadedPipeline, json_schema, load_pipeline
from .engine.handler_threads import running_calls
from .errors import ConfigError, HandlerLoadError, StreamfnError
from .extras import check_extras, extra_of_module, install_hint

if TYPE_CHECKING:
    from .metrics import MetricsConfig

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
log = logging.getLogger("streamfn.cli")


def _load(path: str, *, metrics: bool = False) -> LoadedPipeline:
    """A pipeline file, refused with the extra to install when its connectors need one that is missing."""
    loaded = load_pipeline(path)
    check_extras(loaded, metrics=metrics)
    return loaded


def _load_all(paths: Sequence[str], *, metrics: bool = False) -> list[LoadedPipeline]:
    return [_load(path, metrics=metrics) for path in paths]


def _check_handler(loaded: LoadedPipeline) -> None:
    """Import the handler as ``run`` will; a failure names the file and the ``handler`` field."""
    from .engine.invoke import load_handler

    ctx = loaded.context
    try:
        load_handler(loaded.config.handler, [ctx.config_dir, Path.cwd()])
    except HandlerLoadError as exc:
        raise ConfigError(str(exc), file=str(loaded.path), field="handler") from exc


def _without_sinks(loaded: LoadedPipeline) -> str | None:
    """A warning for a pipeline with no sinks: legitimate when the handler writes its output itself."""
    if loaded.config.sinks:
        return None
    return (f"{loaded.path}: pipeline {loaded.config.name!r} has no [[sinks]]: whatever the handler returns is "
            "discarded (fine if it writes its output itself)")


def cmd_run(args: argparse.Namespace) -> int:
    from .engine.daemon import install_event_loop_policy, run_pipelines
    from .ops.watchdog import BlockedWatch

    loaded = _load_all(args.configs)  # a missing metrics extra is refused by the ops server as it starts
    for item in loaded:
        _check_handler(item)
        warning = _without_sinks(item)
        if warning:
            log.warning(warning, extra={"pipeline": item.config.name})
    metrics = _metrics_config(args, loaded)
    watch = None if args.fail_if_blocked_for is None else BlockedWatch(args.fail_if_blocked_for)
    install_event_loop_policy()
    asyncio.run(run_pipelines(loaded, until_caught_up=args.until_caught_up, metrics=metrics,
                              stop=None if watch is None else watch.stop,
                              watch=None if watch is None else watch.run))
    code = EXIT_OK
    if watch is not None and watch.verdict is not None:
        logs.say(logging.ERROR, watch.verdict)
        code = EXIT_FAILED
    _exit_past_stuck_handlers(code)
    return code


def _exit_past_stuck_handlers(code: int = EXIT_OK) -> None:
    """A plain-function handler call abandoned at the shutdown deadline runs on in its thread; its
    batch was not checkpointed. Exit without waiting for it, and say so. After a clean drain no
    call is running: the interpreter exits normally."""
    stuck = running_calls()
    if stuck:
        logging.getLogger("streamfn.daemon").warning(
            "exiting with %d abandoned handler call(s) still running in threads", stuck)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _metrics_config(args: argparse.Namespace, loaded: Sequence[LoadedPipeline]) -> MetricsConfig | None:
    """The first pipeline file's ``[metrics]`` section (an enabled one first), with only what
    ``--metrics-port`` / ``--metrics-host`` name replaced: its other settings stay as written."""
    sections = [item.config.metrics for item in loaded if item.config.metrics is not None]
    enabled = [section for section in sections if section.enabled]
    if args.metrics_port is None:
        return enabled[0] if enabled else None
    from .metrics import MetricsConfig

    base = (enabled or sections or [MetricsConfig()])[0]
    host = base.host if args.metrics_host is None else args.metrics_host
    return msgspec.structs.replace(base, enabled=True, port=args.metrics_port, host=host)


def cmd_validate(args: argparse.Namespace) -> int:
    """Every check ``run`` makes before reading, with ``run``'s exit code (2) for a file it would refuse."""
    failed = 0
    for path in args.configs:
        try:
            loaded = _load(path, metrics=True)
            _check_handler(loaded)
        except StreamfnError as exc:
            logs.say(logging.ERROR, str(exc))
            failed += 1
        else:
            warning = _without_sinks(loaded)
            if warning:
                logs.say(logging.WARNING, warning)
            print(f"ok: {path} (pipeline {loaded.config.name!r})")
    return EXIT_USAGE if failed else EXIT_OK


def cmd_produce(args: argparse.Namespace) -> int:
    from .produce import produce

    loaded = load_pipeline(args.config)
    text = logs.current_format() == "text"  # in JSON mode stderr carries log lines only
    count = produce(loaded, count=args.count, source_file=args.input, key_field=args.key_field, seed=args.seed,
                    progress=not args.quiet and text)
    if not args.quiet and not text:
        log.info("appended records", extra={"pipeline": loaded.config.name, "records": count})
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    sys.stdout.write(orjson.dumps(json_schema(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return EXIT_OK


# -- operators' verbs (streamfn.ops) ------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    from .ops.status import render_table, status

    loaded = _load_all(args.configs)
    url = args.metrics_url if args.metrics_url is not None else _default_metrics_url(loaded)
    rows, daemon_seen = status(loaded, metrics_url=url or None)
    if args.json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(rows)).decode() + "\n")
    else:
        sys.stdout.write(render_table(rows, daemon_seen=daemon_seen))
        if not daemon_seen:
            sys.stdout.write("(no daemon's /metrics answered: BLOCKED is unknown; see --metrics-url)\n")
    return EXIT_OK


def _default_metrics_url(loaded: Sequence[LoadedPipeline]) -> str | None:
    for item in loaded:
        section = getattr(item.config, "metrics", None)
        if section is not None and getattr(section, "enabled", False):
            host = "127.0.0.1" if section.host in ("0.0.0.0", "::", "") else section.host
            return f"http://{host}:{section.port}"
    return None


def cmd_replay(args: argparse.Namespace) -> int:
    from .engine.daemon import install_event_loop_policy
    from .ops.parts import parse_moment
    from .ops.replay import replay

    loaded = load_pipeline(args.config)
    start = None if args.start == "trim_horizon" else parse_moment(args.start)
    until = None if args.until is None else parse_moment(args.until)
    if start is not None and until is not None and until < start:
        raise ConfigError("--to is before --from")
    install_event_loop_policy()
    count = asyncio.run(replay(loaded, start=start, until=until, past_checkpoint=args.past_checkpoint,
                               progress=not args.quiet))
    print(f"replayed {count:,} records of pipeline {loaded.config.name!r}", file=sys.stderr)
    return EXIT_OK


def cmd_tail(args: argparse.Namespace) -> int:
    from .ops.tail import starting_position, tail

    loaded = _load(args.config)
    asyncio.run(tail(loaded, start=starting_position(args.start), shards=args.shard or (), limit=args.count,
                     as_json=args.json))
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    from .ops.init import next_steps, write_starter

    written = write_starter(Path(args.path), name=args.name, force=args.force)
    for path in written:
        print(f"wrote {path}")
    print(next_steps(written[0]))
    return EXIT_OK


def cmd_checkpoints(args: argparse.Namespace) -> int:
    """Show or edit the lease table's checkpoints (``[checkpoints] type = "dynamodb"``); reset local ones."""
    from .connectors.lease_table import admin
    from .connectors.lease_table.store import DynamoDBCheckpointStoreConfig
    from .ops.parts import parse_moment
    from .protocols.source import StartingPosition

    loaded = load_pipeline(args.config)
    store = loaded.config.checkpoints
    if args.action == "reset" and _local_checkpoints(loaded):
        return _reset_local_checkpoints(loaded, args)
    if not isinstance(store, DynamoDBCheckpointStoreConfig):
        raise ConfigError("checkpoints show/set edit a DynamoDB lease table (and reset local checkpoints); this "
                          "pipeline keeps its checkpoints elsewhere (see `streamfn status`)", file=str(loaded.path),
                          field="checkpoints")
    name = loaded.config.name
    if args.action == "show":
        print(admin.render(asyncio.run(admin.show_checkpoints(store, name))))
    elif args.action == "reset":
        args.to = args.to or "trim_horizon"
        if args.to in ("trim_horizon", "latest"):
            to = StartingPosition(args.to)
        else:
            to = StartingPosition("at_timestamp", parse_moment(args.to))
        done = asyncio.run(admin.reset_checkpoints(store, name, to, shards=args.shard, force=args.force))
        print(f"reset {len(done)} shard(s) to {args.to}: {', '.join(done)}")
    else:
        if not args.shard or len(args.shard) != 1 or args.sequence is None:
            raise ConfigError("checkpoints set needs exactly one --shard and --sequence")
        asyncio.run(admin.set_checkpoint(store, name, args.shard[0], args.sequence, args.sub_sequence,
                                         force=args.force))
        print(f"{args.shard[0]}: resumes after {args.sequence}")
    return EXIT_OK


def _local_checkpoints(loaded: LoadedPipeline) -> bool:
    """Whether the pipeline keeps its checkpoints in the local store (``checkpoints.sqlite3``)."""
    from .connectors.kafka.source import KafkaSourceConfig
    from .connectors.local.store import LocalCheckpointStoreConfig

    store = loaded.config.checkpoints
    if store is None:
        return not isinstance(loaded.config.source, KafkaSourceConfig)
    return isinstance(store, LocalCheckpointStoreConfig)


def _reset_local_checkpoints(loaded: LoadedPipeline, args: argparse.Namespace) -> int:
    """Forget local checkpoints: the shards start at the pipeline's ``starting_position`` on the next run."""
    from .connectors.local.store import LocalCheckpointStoreConfig

    start = loaded.config.starting_position
    if args.to is not None and args.to != start:
        raise ConfigError(f"a local checkpoint store resets shards to the pipeline's starting_position ({start}); "
                          "set starting_position in the file to start elsewhere", file=str(loaded.path),
                          field="starting_position")
    configured = loaded.config.checkpoints
    store = (configured if isinstance(configured, LocalCheckpointStoreConfig)
             else LocalCheckpointStoreConfig()).build(loaded.context)

    async def reset() -> list[str]:
        await store.open()
        try:
            return await store.reset(args.shard)
        finally:
            await store.close()

    done = asyncio.run(reset())
    print(f"reset {len(done)} shard(s) of pipeline {loaded.config.name!r}: they start at {start} on the next run"
          + (f" ({', '.join(done)})" if done else ""))
    return EXIT_OK


def _add_ops_verbs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    checkpoints = verbs.add_parser("checkpoints", help="show, reset or set checkpoints in a lease table; "
                                                       "reset local checkpoints (stop the daemon first)")
    checkpoints.add_argument("action", choices=["show", "reset", "set"])
    checkpoints.add_argument("config")
    checkpoints.add_argument("--to", default=None,
                             help="reset: trim_horizon (default), latest, or a time (epoch seconds or ISO 8601); "
                                  "local checkpoints reset to the pipeline's starting_position")
    checkpoints.add_argument("--shard", action="append", help="only this shard (repeatable; set: exactly one)")
    checkpoints.add_argument("--sequence", type=int, default=None, help="set: resume strictly after this sequence")
    checkpoints.add_argument("--sub-sequence", type=int, default=0)
    checkpoints.add_argument("--force", action="store_true", help="edit even while workers hold the leases")
    checkpoints.set_defaults(func=cmd_checkpoints)

    status = verbs.add_parser("status", help="per shard: checkpoint, lag, lease owner, blocked or not")
    status.add_argument("configs", nargs="+")
    status.add_argument("--metrics-url", default=None,
                        help="a running daemon's metrics endpoint, for BLOCKED (default: from [metrics])")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(func=cmd_status)

    replay = verbs.add_parser("replay", help="reprocess a past range of the source into the sinks, overwriting"
                              " the live run's objects batch for batch")
    replay.add_argument("config")
    replay.add_argument("--from", dest="start", required=True,
                        help="trim_horizon, or a time (epoch seconds or ISO 8601, UTC if no zone)")
    replay.add_argument("--to", dest="until", default=None,
                        help="last arrival time to include (default: the live checkpoint)")
    replay.add_argument("--past-checkpoint", action="store_true",
                        help="go on past the live checkpoint to the tip (the next `run` handles those records again)")
    replay.add_argument("--quiet", action="store_true", help="no progress bar")
    replay.set_defaults(func=cmd_replay)

    tail = verbs.add_parser("tail", help="print the source's records as they arrive")
    tail.add_argument("config")
    tail.add_argument("--from", dest="start", default="latest", help="latest (default), trim_horizon, or a time")
    tail.add_argument("--shard", action="append", help="only this shard (repeatable)")
    tail.add_argument("--count", type=int, default=None, help="exit after this many records")
    tail.add_argument("--json", action="store_true", help="one JSON object per record")
    tail.set_defaults(func=cmd_tail)

    init = verbs.add_parser("init", help="write a commented starter pipeline and handler")
    init.add_argument("path", nargs="?", default=".")
    init.add_argument("--name", default="my-pipeline")
    init.add_argument("--force", action="store_true", help="overwrite existing files")
    init.set_defaults(func=cmd_init)


def _add_log_flags(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """``--log-format`` / ``--log-level`` before the verb (with defaults) and after it (without, so
    that a value given before the verb is not overwritten)."""
    unset = argparse.SUPPRESS
    parser.add_argument("--log-format", choices=["text", "json"], default="text" if defaults else unset,
                        help="text: logfmt lines; json: one JSON object per line, nothing else on stderr")
    parser.add_argument("--log-level", type=str.lower, choices=logs.LEVELS, default="info" if defaults else unset)


class _Parser(argparse.ArgumentParser):
    """Usage errors as a JSON log line when ``--log-format json`` was asked for (see ``main``)."""

    def error(self, message: str) -> NoReturn:
        if logs.current_format() != "json":
            super().error(message)
        log.error(message, extra={"usage": self.format_usage().strip()})
        sys.exit(EXIT_USAGE)


class _VerbParsers(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Every verb also accepts the global log flags after it."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = super().add_parser(name, **kwargs)
        _add_log_flags(parser, defaults=False)
        return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="streamfn", description=__doc__)
    parser.add_argument("--version", action="version", version=f"streamfn {__version__}")
    _add_log_flags(parser, defaults=True)
    parser.register("action", "parsers", _VerbParsers)
    verbs = parser.add_subparsers(dest="verb", required=True)

    run = verbs.add_parser("run", help="run pipelines as a daemon until SIGTERM/SIGINT")
    run.add_argument("configs", nargs="+")
    run.add_argument("--until-caught-up", action="store_true", help="exit 0 once every shard is drained")
    run.add_argument("--fail-if-blocked-for", type=_positive_seconds, default=None, metavar="SECONDS",
                     help="stop and exit 1, naming the shard and its error, once any shard has been blocked "
                          "this long (keeps --until-caught-up from hanging a CI job)")
    run.add_argument("--metrics-port", type=int, default=None, help="serve /metrics, /healthz, /readyz on this port")
    run.add_argument("--metrics-host", default=None,
                     help="address for --metrics-port (default: the file's [metrics] host, else 127.0.0.1)")
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
    _add_ops_verbs(cast("argparse._SubParsersAction[argparse.ArgumentParser]", verbs))
    return parser


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def _asks_for_json(words: Sequence[str]) -> bool:
    pairs = zip(words, [*words[1:], ""], strict=True)
    return any(word == "--log-format=json" or (word == "--log-format" and value == "json") for word, value in pairs)


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    if _asks_for_json(words):
        logs.configure("json")  # so that even a usage error is a JSON line
    args = build_parser().parse_args(words)
    logs.configure(args.log_format, args.log_level)
    try:
        return int(args.func(args))
    except (ConfigError, HandlerLoadError) as exc:
        logs.say(logging.ERROR, str(exc))
        return EXIT_USAGE
    except StreamfnError as exc:
        logs.say(logging.ERROR, str(exc))
        return EXIT_FAILED
    except ModuleNotFoundError as exc:
        extra = extra_of_module(exc.name)
        if extra is None:
            raise
        logs.say(logging.ERROR, f"{exc}: this needs the {extra!r} extra: {install_hint(extra)}")
        return EXIT_USAGE
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception:
        if logs.current_format() != "json":
            raise
        log.exception("unexpected error")  # a traceback as one JSON line, not raw text on stderr
        return EXIT_FAILED


def _discard_stdout() -> None:
    """The reader of stdout went away (``streamfn tail ... | head``): that is how such a command ends.
    Point stdout at /dev/null so that the interpreter's last flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
