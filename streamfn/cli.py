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
    from .engine.daemon import Reloader
    from .metrics import MetricsConfig

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
TRACES_HELP = "OpenTelemetry spans per batch over OTLP/HTTP (OTEL_EXPORTER_OTLP_* apply; needs streamfn[otel])"
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
    from .runtime.build import check_start

    if check_start(loaded):  # a handler in processes of its own is not imported here
        return
    ctx = loaded.context
    if loaded.config.handler_version is not None:
        _check_handler_version(loaded)
        return
    try:
        load_handler(loaded.config.handler, [ctx.config_dir, Path.cwd()])
    except HandlerLoadError as exc:
        from .engine.handler_log import log_import_failure

        log_import_failure(exc, handler=loaded.config.handler, file=str(loaded.path))
        raise ConfigError(str(exc), file=str(loaded.path), field="handler") from exc


def _without_sinks(loaded: LoadedPipeline) -> str | None:
    """A warning for a pipeline with no sinks: legitimate when the handler writes its output itself."""
    if loaded.config.sinks:
        return None
    return (f"{loaded.path}: pipeline {loaded.config.name!r} has no [[sinks]]: whatever the handler returns is "
            "discarded (fine if it writes its output itself)")


def cmd_run(args: argparse.Namespace) -> int:
    from .engine.daemon import install_event_loop_policy, run_pipelines
    from .engine.memory import tune_process
    from .engine.reload import pipeline_files
    from .ops.watchdog import BlockedWatch

    # a missing metrics extra is refused by the ops server as it starts
    loaded = _load_all([str(path) for path in pipeline_files(args.configs)])
    if not loaded:
        raise ConfigError(f"no pipeline files (*.toml, *.yaml, *.yml, *.json) in {', '.join(args.configs)}")
    for item in loaded:
        _refuse_a_second(item, loaded)
        _check_handler(item)
        warning = _without_sinks(item)
        if warning:
            log.warning(warning, extra={"pipeline": item.config.name})
    metrics = _metrics_config(args, loaded)
    watch = None if args.fail_if_blocked_for is None else BlockedWatch(args.fail_if_blocked_for)
    install_event_loop_policy()
    _start_traces(args)
    try:
        tune_process()  # the daemon owns its process: allocator and GC settings (engine/memory.py)
        asyncio.run(run_pipelines(loaded, until_caught_up=args.until_caught_up, metrics=metrics,
                                  stop=None if watch is None else watch.stop,
                                  watch=None if watch is None else watch.run, reloader=_reloader(args.configs),
                                  release_idle_heap=True))
    finally:
        _stop_traces(args)
    code = EXIT_OK
    if watch is not None and watch.verdict is not None:
        logs.say(logging.ERROR, watch.verdict)
        code = EXIT_FAILED
    _exit_past_stuck_handlers(code)
    return code


def _refuse_a_second(item: LoadedPipeline, others: Sequence[LoadedPipeline]) -> None:
    """Two files naming the same pipeline would share its checkpoints and object keys: refuse the second."""
    first = next((other for other in others if other.config.name == item.config.name), item)
    if first is not item:
        raise ConfigError(f"pipeline {item.config.name!r} is already defined in {first.path}", file=str(item.path),
                          field="name")


def _reloader(arguments: Sequence[str]) -> Reloader:
    """SIGHUP's re-read of ``run``'s files and directories, with ``run``'s checks; refusals are logged."""
    from .engine.reload import pipeline_files

    def reread() -> tuple[dict[Path, LoadedPipeline], list[Path]]:
        wanted: dict[Path, LoadedPipeline] = {}
        refused: list[Path] = []
        for path in pipeline_files(arguments):
            try:
                item = _load(str(path))
                _check_handler(item)
                _refuse_a_second(item, list(wanted.values()))
            except StreamfnError as exc:
                log.error("reload: file refused, its pipeline (if any) runs on unchanged: %s", exc)
                refused.append(path)
            else:
                wanted[path] = item
        return wanted, refused

    return reread


def _start_traces(args: argparse.Namespace) -> None:
    """``--traces``: OpenTelemetry spans per batch, exported over OTLP (engine/tracing.py)."""
    if args.traces:
        from .engine import tracing

        tracing.configure_from_environment()


def _stop_traces(args: argparse.Namespace) -> None:
    if args.traces:
        from .engine import tracing

        tracing.shutdown()  # exports the spans still buffered


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
    from .engine.reload import expand_directories

    failed = 0
    for path in map(str, expand_directories(args.configs)):
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
    from .ops.produce import produce

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


# -- handler tests (streamfn.testing) ----------------------------------------------------
def cmd_test(args: argparse.Namespace) -> int:
    """Run the handler over --input in memory; exit 0 when its output equals --expect, else 1 with a diff."""
    from .testing.run import compare, read_expected, run_file, write_expected

    if args.update:
        actual = run_file(args.config, args.input, key_field=args.key_field, shards=args.shards,
                          time_limit=args.timeout)
        write_expected(args.expect, actual)
        print(f"wrote {len(actual)} items to {args.expect}")
        return EXIT_OK
    expected = read_expected(args.expect)
    actual = run_file(args.config, args.input, key_field=args.key_field, shards=args.shards,
                      time_limit=args.timeout)
    comparison = compare(expected, actual, unordered=args.unordered)
    if comparison.passed:
        print(f"ok: {args.config}: {len(comparison.actual)} items as expected in {args.expect}")
        return EXIT_OK
    sys.stdout.write(comparison.diff + "\n")
    print(f"FAILED: {args.config}: the output differs from {args.expect} (- expected, + actual)")
    return EXIT_FAILED


def _add_test_verb(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    test = verbs.add_parser("test", help="run the handler over a file of records in memory and compare its "
                                         "output with a file of expected items")
    test.add_argument("config")
    test.add_argument("--input", required=True, help="JSON lines: one record's data per line (as `produce`)")
    test.add_argument("--expect", required=True, help="JSON lines: the items the sinks should receive, in order")
    test.add_argument("--key-field", default=None, help="JSON field used as partition key (default: line number)")
    test.add_argument("--unordered", action="store_true", help="compare the items in any order")
    test.add_argument("--shards", type=int, default=1, help="shards of the in-memory source (default 1)")
    test.add_argument("--timeout", type=_positive_seconds, default=60.0, help="seconds before giving up")
    test.add_argument("--update", action="store_true", help="write the actual output to --expect instead")
    test.set_defaults(func=cmd_test)


# -- handler versions and aliases (streamfn.versions) -------------------------------------
def _check_handler_version(loaded: LoadedPipeline) -> None:
    """The version ``handler_version`` names exists and imports; errors name the field."""
    from .versions import VersionStore, load_version

    ref = loaded.config.handler_version
    assert ref is not None
    try:
        store = VersionStore(loaded.context.state_dir)
        load_version(store, store.resolve(ref), loaded.config.name)
    except (ConfigError, HandlerLoadError) as exc:
        message = exc.message if isinstance(exc, ConfigError) else str(exc)
        raise ConfigError(message, file=str(loaded.path), field="handler_version") from exc


def cmd_publish(args: argparse.Namespace) -> int:
    from .versions import VersionStore

    loaded = load_pipeline(args.config)
    ctx = loaded.context
    version, created = VersionStore(ctx.state_dir).publish(loaded.config.handler, [ctx.config_dir, Path.cwd()])
    state = "published" if created else "unchanged: already"
    print(f"{state} version {version.version} of {loaded.config.name!r} ({loaded.config.handler}, "
          f"sha256 {version.sha256[:12]})")
    return EXIT_OK


def cmd_alias(args: argparse.Namespace) -> int:
    from .versions import VersionStore, load_version

    loaded = load_pipeline(args.config)
    store = VersionStore(loaded.context.state_dir)
    number = store.resolve(args.version)
    load_version(store, number, loaded.config.name)  # refuse to point an alias at code that does not import
    alias = store.set_alias(args.name, number)
    print(f"alias {alias.name!r} of {loaded.config.name!r} -> version {alias.version}")
    return EXIT_OK


def cmd_versions(args: argparse.Namespace) -> int:
    from .versions import VersionStore

    loaded = load_pipeline(args.config)
    described = VersionStore(loaded.context.state_dir).describe()
    if args.json:
        sys.stdout.write(orjson.dumps(described, option=orjson.OPT_INDENT_2).decode() + "\n")
        return EXIT_OK
    if not described["versions"]:
        print(f"no published versions of {loaded.config.name!r}: see `streamfn publish`")
    for row in described["versions"]:
        names = f"  <- {', '.join(row['aliases'])}" if row["aliases"] else ""
        print(f"{row['version']:>4}  {row['published_at']}  {row['sha256'][:12]}  {row['handler']}{names}")
    return EXIT_OK


def _add_version_verbs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    publish = verbs.add_parser("publish", help="freeze the handler's code as a new numbered version")
    publish.add_argument("config")
    publish.set_defaults(func=cmd_publish)

    alias = verbs.add_parser("alias", help="point an alias at a published version (running daemons follow it)")
    alias.add_argument("action", choices=["set"])
    alias.add_argument("config")
    alias.add_argument("name")
    alias.add_argument("version", help="a version number, or another alias")
    alias.set_defaults(func=cmd_alias)

    versions = verbs.add_parser("versions", help="list a pipeline's published versions and aliases")
    versions.add_argument("config")
    versions.add_argument("--json", action="store_true", help="print JSON instead of a table")
    versions.set_defaults(func=cmd_versions)


# -- SAM / CloudFormation import (streamfn.sam_import) -------------------------------------
def cmd_import(args: argparse.Namespace) -> int:
    """One pipeline file per stream mapping of the template, each checked as ``validate`` checks it."""
    from .sam_import import import_template

    parameters = dict(item.split("=", 1) for item in args.parameter)
    out = Path(args.out) if args.out else Path(args.template).parent
    result = import_template(Path(args.template), out, parameters)
    failed = 0
    for path, notes in result.written:
        print(f"wrote {path}" + (": not carried over, or carried over by assumption:" if notes else ""))
        for note in notes:
            print(f"  - {note}")
        try:
            _check_handler(_load(str(path)))
        except StreamfnError as exc:
            logs.say(logging.ERROR, str(exc))
            failed += 1
    for name, why in result.skipped:
        logs.say(logging.WARNING, f"skipped {name}: {why}")
    if not result.written and not result.skipped:
        logs.say(logging.WARNING, f"{args.template}: no Kinesis, DynamoDB, MSK or SelfManagedKafka mappings found")
    return EXIT_FAILED if failed else EXIT_OK


def _add_import_verb(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    imported = verbs.add_parser("import", help="turn a SAM / CloudFormation template's stream event source "
                                               "mappings into pipeline files")
    imported.add_argument("template")
    imported.add_argument("--out", default=None, help="folder for the pipeline files (default: the template's)")
    imported.add_argument("--parameter", action="append", default=[], type=_parameter, metavar="NAME=VALUE",
                          help="a template parameter's value (repeatable; default: its Default)")
    imported.set_defaults(func=cmd_import)


def _parameter(text: str) -> str:
    if "=" not in text or not text.split("=", 1)[0]:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return text


# -- operators' verbs (streamfn.ops) ------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    from .ops.status import render_table, status

    loaded = _load_all(args.configs)
    url = args.metrics_url if args.metrics_url is not None else _default_metrics_url(loaded)
    if args.watch:
        return _watch_status(url, args.interval)
    rows, daemon_seen = status(loaded, metrics_url=url or None)
    if args.json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(rows)).decode() + "\n")
    else:
        sys.stdout.write(render_table(rows, daemon_seen=daemon_seen))
        if not daemon_seen:
            sys.stdout.write("(no daemon's /metrics answered: BLOCKED is unknown; see --metrics-url)\n")
    return EXIT_OK


def _watch_status(url: str | None, interval: float) -> int:
    """``status --watch``: redraw the live table from the daemon's /metrics until Ctrl-C."""
    from .ops.watch import watch  # needs the metrics extra (prometheus-client parses the page): named if missing

    if not url:
        raise ConfigError("status --watch reads a running daemon's /metrics: pass --metrics-url, or enable "
                          "[metrics] in the file (or run the daemon with --metrics-port)")
    watch(url, interval=interval, out=sys.stdout)
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
    text = logs.current_format() == "text"  # in JSON mode stderr carries log lines only: no bar
    _start_traces(args)
    try:
        count = asyncio.run(replay(loaded, start=start, until=until, past_checkpoint=args.past_checkpoint,
                                   progress=not args.quiet and text))
    finally:
        _stop_traces(args)
    if text:
        print(f"replayed {count:,} records of pipeline {loaded.config.name!r}", file=sys.stderr)
    else:
        log.info("replayed records", extra={"pipeline": loaded.config.name, "records": count})
    return EXIT_OK


def cmd_tail(args: argparse.Namespace) -> int:
    from .ops.tail import starting_position, tail

    loaded = _load(args.config)
    if args.output:
        return _tail_output(loaded, args)
    asyncio.run(tail(loaded, start=starting_position(args.start), shards=args.shard or (), limit=args.count,
                     as_json=args.json))
    return EXIT_OK


def _tail_output(loaded: LoadedPipeline, args: argparse.Namespace) -> int:
    """``tail --output``: the items the handler returned, read from the objects the local and S3 sinks wrote."""
    from .ops.tail import starting_position
    from .ops.tail_output import tail_output

    if args.shard:
        raise ConfigError("tail --output follows the sinks' objects, which are not split by shard: drop --shard")
    asyncio.run(tail_output(loaded, start=starting_position(args.start), limit=args.count, as_json=args.json,
                            out=sys.stdout))
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    from .ops.init import next_steps, write_starter

    written = write_starter(Path(args.path), name=args.name, force=args.force)
    for path in written:
        print(f"wrote {path}")
    print(next_steps(written[0]))
    return EXIT_OK


def cmd_checkpoints(args: argparse.Namespace) -> int:
    """Show or edit checkpoints wherever the pipeline keeps them: a lease table, a Kafka group, local."""
    from .connectors.lease_table.store import DynamoDBCheckpointStoreConfig
    from .engine.run_lock import local_store_path

    loaded = _load(args.config)
    target = None if args.action == "show" else _checkpoint_target(args)
    lease_table = isinstance(loaded.config.checkpoints, DynamoDBCheckpointStoreConfig)
    local = not lease_table and local_store_path(loaded) is not None
    if target is not None and target.kind == "sequence" and (lease_table or local):  # Kafka checks its own
        from .ops.checkpoints.sequence_check import check_sequence

        asyncio.run(check_sequence(loaded, args.shard[0], target.sequence))
    if lease_table:
        return _lease_table_checkpoints(loaded, loaded.config.checkpoints, args, target)
    if local:
        return _local_checkpoints(loaded, args, target)
    return _kafka_checkpoints(loaded, args, target)


def _checkpoint_target(args: argparse.Namespace) -> Any:
    """Where ``reset --to`` or ``set --sequence`` moves the chosen shards."""
    from .ops.checkpoints.edits import Target
    from .ops.parts import parse_moment

    if args.action == "set":
        if not args.shard or len(args.shard) != 1 or args.sequence is None:
            raise ConfigError("checkpoints set needs exactly one --shard and --sequence")
        return Target(kind="sequence", sequence=args.sequence)
    if args.sequence is not None:
        raise ConfigError("--sequence goes with `checkpoints set`; reset takes --to")
    if args.to is None:
        return None  # the store's default
    if args.to in ("trim_horizon", "latest"):
        return Target(kind=args.to)
    return Target(kind="at_timestamp", timestamp=parse_moment(args.to))


def _print_edit(loaded: LoadedPipeline, args: argparse.Namespace, changes: Sequence[Any], target: Any) -> None:
    from .ops.checkpoints.edits import render_changes

    head = "would " + args.action if args.dry_run else args.action
    print(f"{head} {len(changes)} shard(s) of pipeline {loaded.config.name!r} to {target.describe()}"
          + (" (dry run: nothing written)" if args.dry_run else ""))
    if changes:
        print(render_changes(changes))


def _local_checkpoints(loaded: LoadedPipeline, args: argparse.Namespace, target: Any) -> int:
    """Local checkpoints: positions from the local log; no --to forgets them (the shards start at the
    pipeline's starting_position)."""
    from .ops.checkpoints import local as admin_local
    from .ops.checkpoints.edits import Target, render_rows

    if args.action == "show":
        print(render_rows(admin_local.show(loaded)))
        return EXIT_OK
    target = target or Target(kind="start")
    planned = admin_local.plan(loaded, target, args.shard)
    changes = admin_local.changes(loaded, planned)
    if not args.dry_run:
        asyncio.run(admin_local.apply(loaded, planned, force=args.force, every_shard=args.shard is None))
    shown = target if target.kind != "start" else Target(kind=loaded.config.starting_position)
    _print_edit(loaded, args, changes, shown)
    return EXIT_OK


def _kafka_checkpoints(loaded: LoadedPipeline, args: argparse.Namespace, target: Any) -> int:
    """A Kafka source's group offsets; no --to resets to trim_horizon (the earliest offsets)."""
    from .ops.checkpoints import kafka as admin_kafka
    from .ops.checkpoints.edits import Target, render_rows

    if args.action == "show":
        print(render_rows(asyncio.run(admin_kafka.show(loaded))))
        return EXIT_OK
    target = target or Target(kind="trim_horizon")
    changes = asyncio.run(admin_kafka.edit(loaded, target, args.shard, force=args.force, dry_run=args.dry_run))
    _print_edit(loaded, args, changes, target)
    return EXIT_OK


def _lease_table_checkpoints(loaded: LoadedPipeline, store: Any, args: argparse.Namespace, target: Any) -> int:
    """A lease table: resets are recorded in the leases (``reset_to``) and applied by the next run."""
    from .ops.checkpoints import lease_table as admin
    from .ops.checkpoints.edits import Change, Target
    from .protocols.source import StartingPosition

    name, aws = loaded.config.name, loaded.config.aws
    if args.action == "show":
        print(admin.render(asyncio.run(admin.show_checkpoints(store, name, aws))))
        return EXIT_OK
    target = target or Target(kind="trim_horizon")
    if args.dry_run:
        rows = asyncio.run(admin.show_checkpoints(store, name, aws))
        chosen = [row for row in rows if not args.shard or row.shard_id in args.shard]
        missing = sorted(set(args.shard or ()) - {row.shard_id for row in rows})
        if missing:
            raise ConfigError(f"no lease for shard(s) {', '.join(missing)} in this pipeline")
        changes = [Change(shard_id=row.shard_id, before=row.checkpoint, after=target.describe()) for row in chosen]
    elif target.kind == "sequence":
        asyncio.run(admin.set_checkpoint(store, name, args.shard[0], target.sequence, args.sub_sequence,
                                         force=args.force, aws=aws))
        changes = [Change(shard_id=args.shard[0], before="", after=str(target.sequence))]
    else:
        start = StartingPosition(target.kind, target.timestamp)
        done = asyncio.run(admin.reset_checkpoints(store, name, start, shards=args.shard, force=args.force,
                                                   aws=aws))
        changes = [Change(shard_id=shard, before="", after=target.describe()) for shard in done]
    _print_edit(loaded, args, changes, target)
    return EXIT_OK


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative: sequences start at 0")
    return value


def _add_ops_verbs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    checkpoints = verbs.add_parser("checkpoints", help="show, reset or set checkpoints: local, lease table or "
                                                       "Kafka group (refused while a worker runs the shard)")
    checkpoints.add_argument("action", choices=["show", "reset", "set"])
    checkpoints.add_argument("config")
    checkpoints.add_argument("--to", default=None,
                             help="reset: trim_horizon, latest, or a time (epoch seconds or ISO 8601); default: "
                                  "trim_horizon, or for local checkpoints the pipeline's starting_position")
    checkpoints.add_argument("--shard", action="append", help="only this shard (repeatable; set: exactly one)")
    checkpoints.add_argument("--sequence", type=_non_negative, default=None,
                             help="set: resume strictly after this sequence (refused if the shard does not hold it)")
    checkpoints.add_argument("--sub-sequence", type=_non_negative, default=0)
    checkpoints.add_argument("--force", action="store_true",
                             help="edit even while a worker runs the shard (a daemon, a live lease, a group member)")
    checkpoints.add_argument("--dry-run", action="store_true", help="print what would change, write nothing")
    checkpoints.set_defaults(func=cmd_checkpoints)

    status = verbs.add_parser("status", help="per shard: checkpoint, lag, lease owner, blocked or not")
    status.add_argument("configs", nargs="+")
    status.add_argument("--metrics-url", default=None,
                        help="a running daemon's metrics endpoint, for BLOCKED (default: from [metrics])")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument("--watch", action="store_true",
                        help="refresh a live per-shard table (records/s, lag, iterator age, blocked, errors) from "
                             "the daemon's /metrics until Ctrl-C")
    status.add_argument("--interval", type=_positive_seconds, default=2.0, help="--watch: seconds between refreshes")
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
    replay.add_argument("--traces", action="store_true",
                        help=TRACES_HELP)
    replay.set_defaults(func=cmd_replay)

    tail = verbs.add_parser("tail", help="print the source's records as they arrive (--output: what the handler "
                                         "returned, as the local sinks wrote it)")
    tail.add_argument("config")
    tail.add_argument("--from", dest="start", default="latest", help="latest (default), trim_horizon, or a time")
    tail.add_argument("--shard", action="append", help="only this shard (repeatable)")
    tail.add_argument("--count", type=int, default=None, help="exit after this many records")
    tail.add_argument("--json", action="store_true", help="one JSON object per record")
    tail.add_argument("--output", action="store_true",
                      help="print the handler's output: each item of each object the local and S3 sinks write (--from "
                           "latest: new objects; trim_horizon: all; a time: written since)")
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

    run = verbs.add_parser("run", help="run pipelines as a daemon until SIGTERM/SIGINT; SIGHUP reloads the files")
    run.add_argument("configs", nargs="+", metavar="FILE_OR_DIR",
                     help="pipeline files, or directories of them (*.toml, *.yaml, *.yml, *.json)")
    run.add_argument("--until-caught-up", action="store_true", help="exit 0 once every shard is drained")
    run.add_argument("--fail-if-blocked-for", type=_positive_seconds, default=None, metavar="SECONDS",
                     help="stop and exit 1, naming the shard and its error, once any shard has been blocked "
                          "this long (keeps --until-caught-up from hanging a CI job)")
    run.add_argument("--metrics-port", type=int, default=None, help="serve /metrics, /healthz, /readyz on this port")
    run.add_argument("--metrics-host", default=None,
                     help="address for --metrics-port (default: the file's [metrics] host, else 127.0.0.1)")
    run.add_argument("--traces", action="store_true",
                     help=TRACES_HELP)
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
    _add_test_verb(cast("argparse._SubParsersAction[argparse.ArgumentParser]", verbs))
    _add_version_verbs(cast("argparse._SubParsersAction[argparse.ArgumentParser]", verbs))
    _add_import_verb(cast("argparse._SubParsersAction[argparse.ArgumentParser]", verbs))
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
