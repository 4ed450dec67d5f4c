"""Published versions and aliases: content-hashed, immutable, imported side by side in isolation,
and followed by the per-lane slot at batch boundaries only."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfn import Record
from streamfn.engine.invoke import Invoker
from streamfn.engine.versioned import VersionedInvoker, VersionPicker
from streamfn.errors import ConfigError, HandlerLoadError, RetryableError
from streamfn.handler_api import Context
from streamfn.records import Batch
from streamfn.testing.memory import MemoryCheckpointStore
from streamfn.versions import VersionStore, content_hash, load_version

HANDLER = '''
CALLS = []
VERSION_MARK = {mark!r}

def handle(batch, context):
    CALLS.append(len(batch))
    return [{{"mark": VERSION_MARK, "version": context.function_version, "calls": len(CALLS),
              "arn": context.invoked_function_arn, "seq": r.sequence}} for r in batch]
'''


def write_handler(folder: Path, mark: str, module: str = "app") -> None:
    (folder / f"{module}.py").write_text(HANDLER.format(mark=mark))


def publish(store: VersionStore, folder: Path, handler: str = "app:handle") -> int:
    version, _ = store.publish(handler, [folder])
    return version.version


def test_publish_is_content_addressed_and_numbered(tmp_path: Path) -> None:
    store = VersionStore(tmp_path / "state")
    write_handler(tmp_path, "one")
    first, created = store.publish("app:handle", [tmp_path])
    again, created_again = store.publish("app:handle", [tmp_path])
    assert (first.version, created, again.version, created_again) == (1, True, 1, False)
    write_handler(tmp_path, "two")
    assert publish(store, tmp_path) == 2
    write_handler(tmp_path, "one")  # back to the first content: that version, not a third
    assert publish(store, tmp_path) == 1
    assert [v.version for v in store.versions()] == [1, 2]
    assert (store.code_dir(1) / "app.py").read_text() == HANDLER.format(mark="one")
    assert not list(store.root.glob(".publish-*")), "no staging directory is left behind"


def test_a_package_is_frozen_whole_and_its_relative_imports_stay_inside(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("WORD = 'first'\n")
    (package / "main.py").write_text("from .helpers import WORD\n\ndef handle(batch, context):\n    return [WORD]\n")
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "junk.pyc").write_bytes(b"x")
    store = VersionStore(tmp_path / "state")
    assert publish(store, tmp_path, "pkg.main:handle") == 1
    before = content_hash(package)
    (package / "__pycache__" / "junk.pyc").write_bytes(b"changed")
    assert content_hash(package) == before, "caches do not make a new version"
    (package / "helpers.py").write_text("WORD = 'second'\n")
    assert publish(store, tmp_path, "pkg.main:handle") == 2
    one, two = load_version(store, 1, "p"), load_version(store, 2, "p")
    assert one(None, None) == ["first"] and two(None, None) == ["second"]


def test_two_versions_of_one_module_have_separate_globals(tmp_path: Path) -> None:
    store = VersionStore(tmp_path / "state")
    write_handler(tmp_path, "one")
    publish(store, tmp_path)
    (tmp_path / "app.py").write_text(HANDLER.format(mark="two") + "ONLY_IN_TWO = True\n")
    publish(store, tmp_path)
    one, two = load_version(store, 1, "iso"), load_version(store, 2, "iso")
    context = Context(pipeline="iso", shard_id="s", attempt=0, timeout=1)
    batch = Batch("s", [Record("s", 1, "k", b"x", 0.0)])
    one(batch, context)
    one(batch, context)
    assert two(batch, context)[0]["calls"] == 1, "version 2 does not see version 1's CALLS"
    assert one.__globals__["VERSION_MARK"] == "one" and two.__globals__["VERSION_MARK"] == "two"
    assert "ONLY_IN_TWO" not in one.__globals__ and two.__globals__["ONLY_IN_TWO"]
    assert one.__module__ != two.__module__
    assert load_version(store, 1, "iso") is one, "a version is imported once per process"


def test_aliases_resolve_and_refuse_what_does_not_exist(tmp_path: Path) -> None:
    store = VersionStore(tmp_path / "state")
    write_handler(tmp_path, "one")
    publish(store, tmp_path)
    store.set_alias("live", 1)
    assert store.resolve("live") == 1 and store.resolve(1) == 1 and store.resolve("1") == 1
    with pytest.raises(ConfigError, match="not published"):
        store.set_alias("live", 7)
    with pytest.raises(ConfigError, match="does not exist"):
        store.resolve("canary")
    with pytest.raises(ConfigError, match="not a valid alias"):
        store.set_alias("12", 1)
    with pytest.raises(ConfigError, match="not a valid alias"):
        store.set_alias("../x", 1)
    assert store.describe()["aliases"] == {"live": 1}


def test_a_handler_that_is_not_beside_the_config_cannot_be_published(tmp_path: Path) -> None:
    with pytest.raises(HandlerLoadError, match="only a module or package"):
        VersionStore(tmp_path / "state").publish("json:dumps", [tmp_path])


def test_the_picker_stats_the_alias_at_most_once_per_interval(tmp_path: Path) -> None:
    store = VersionStore(tmp_path / "state")
    for mark in ("one", "two"):
        write_handler(tmp_path, mark)
        publish(store, tmp_path)
    store.set_alias("live", 1)
    now = [0.0]
    picker = VersionPicker(store, "live", check_interval=0.1, clock=lambda: now[0])
    assert picker.current() == 1
    store.set_alias("live", 2)
    now[0] = 0.05
    assert picker.current() == 1, "not looked at again within the interval"
    now[0] = 0.2
    assert picker.current() == 2
    store.alias_path("live").unlink()
    now[0] = 0.4
    assert picker.current() == 2, "a vanished alias keeps the version in use"


def _versioned(tmp_path: Path, versions: int) -> tuple[VersionStore, VersionedInvoker]:
    store = VersionStore(tmp_path / "state")
    for n in range(versions):
        write_handler(tmp_path, f"v{n + 1}")
        publish(store, tmp_path)
    store.set_alias("live", 1)
    picker = VersionPicker(store, "live", check_interval=0.0)

    def build(handler: Any) -> Invoker:
        return Invoker(handler, interface="native", timeout=5, report_failures=False, lambda_event=lambda b: {})

    return store, VersionedInvoker(store, picker, build, pipeline=f"p{abs(hash(tmp_path))}")


def _records(first: int, n: int) -> list[Record]:
    return [Record("s", seq, "k", b"x", 0.0) for seq in range(first, first + n)]


async def _call(slot: Any, records: list[Record]) -> tuple[str, str]:
    context = Context(pipeline="p", shard_id="s", attempt=0, timeout=5)
    result = await slot.call(Batch("s", records), context)
    return result.items[0]["mark"], result.items[0]["arn"]


def test_context_carries_the_version_and_the_alias(tmp_path: Path) -> None:
    _, invoker = _versioned(tmp_path, 1)
    mark, arn = asyncio.run(_call(invoker.slot(), _records(1, 2)))
    assert mark == "v1" and arn == "arn:aws:lambda:local:000000000000:function:p:live"
    plain = Context(pipeline="p", shard_id="s", attempt=0, timeout=1)
    assert (plain.function_version, plain.invoked_function_arn) == ("$LATEST", "arn:aws:lambda:local:000000000000:"
                                                                                "function:p")


# Each batch is a list of calls: (offset, length) slices of it, as retries, splits and partial
# failures make them; the alias may move before any call.
batches = st.lists(
    st.tuples(st.integers(1, 6),
              st.lists(st.tuples(st.integers(0, 5), st.integers(1, 6), st.sampled_from([None, 1, 2, 3])),
                       max_size=4),
              st.sampled_from([None, 1, 2, 3])),
    min_size=1, max_size=12)


@settings(max_examples=40, deadline=None)
@given(plan=batches)
def test_every_batch_is_handled_wholly_by_the_version_its_first_call_used(tmp_path_factory: Any, plan: Any) -> None:
    store, invoker = _versioned(tmp_path_factory.mktemp("v"), 3)

    async def run() -> None:
        slot = invoker.slot()
        first = 1
        for size, retries, move_before in plan:
            if move_before is not None:
                store.set_alias("live", move_before)
            expected = f"v{store.resolve('live')}"
            records = _records(first, size)
            marks = [(await _call(slot, records))[0]]
            for offset, length, move in retries:
                if move is not None:
                    store.set_alias("live", move)
                part = records[min(offset, size - 1):][:length]
                marks.append((await _call(slot, part))[0])
            assert set(marks) == {expected}, "one version per batch, the one the alias named as it started"
            first += size

    asyncio.run(run())


def test_a_version_that_does_not_import_blocks_without_failing_the_batch(tmp_path: Path) -> None:
    store, invoker = _versioned(tmp_path, 1)
    (tmp_path / "app.py").write_text("raise ImportError('broken build')\n")
    publish(store, tmp_path)
    slot = invoker.slot()

    async def run() -> None:
        assert (await _call(slot, _records(1, 2)))[0] == "v1"
        store.set_alias("live", 2)
        with pytest.raises(RetryableError, match="broken build"):
            await _call(slot, _records(3, 2))
        store.set_alias("live", 1)  # rollback: the same batch goes on with version 1
        assert (await _call(slot, _records(3, 2)))[0] == "v1"

    asyncio.run(run())


def test_validate_refuses_a_version_that_is_not_there(tmp_path: Path, capsys: Any) -> None:
    from streamfn.cli import main

    write_handler(tmp_path, "one")
    config = tmp_path / "p.toml"
    config.write_text('name = "p"\nhandler = "app:handle"\nhandler_version = "live"\n'
                      '[source]\ntype = "local"\nstream = "s"\n')
    assert main(["validate", str(config)]) == 2
    assert "handler_version" in capsys.readouterr().err
    assert main(["publish", str(config)]) == 0
    assert main(["alias", "set", str(config), "live", "1"]) == 0
    assert main(["validate", str(config)]) == 0
    assert main(["versions", str(config)]) == 0
    assert "<- live" in capsys.readouterr().out
    (tmp_path / "app.py").write_text("import no_such_module_anywhere\n")
    assert main(["publish", str(config)]) == 0
    assert main(["alias", "set", str(config), "live", "2"]) == 2, "an alias never points at code that fails"
    assert "no_such_module_anywhere" in capsys.readouterr().err
    assert VersionStore(tmp_path / "state").resolve("live") == 1
    config.write_text(config.read_text().replace('"live"', "0"))
    assert main(["validate", str(config)]) == 2


def test_the_active_version_is_a_metric(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from streamfn.engine.pipeline import AllShardsAssigner
    from streamfn.metrics import StatsCollector, build_registry

    store, invoker = _versioned(tmp_path, 2)
    slot = invoker.slot()
    store.set_alias("live", 2)
    asyncio.run(_call(slot, _records(1, 1)))
    pipelines: Any = [SimpleNamespace(name=invoker.pipeline, runners={}, shard_stats={},
                                      assigner=AllShardsAssigner(None),  # type: ignore[arg-type]
                                      store=MemoryCheckpointStore())]
    text = generate_latest(build_registry(StatsCollector(lambda: pipelines), process=False)).decode()
    values = {tuple(sorted(s.labels.items())): s.value for family in text_string_to_metric_families(text)
              for s in family.samples if s.name == "streamfn_handler_version"}
    assert values == {(("pipeline", invoker.pipeline),): 2}


def test_concurrent_publishers_get_distinct_numbers(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    store = VersionStore(tmp_path / "state")
    folders = []
    for n in range(6):
        folder = tmp_path / f"src{n}"
        folder.mkdir()
        write_handler(folder, f"m{n}")
        folders.append(folder)
    with ThreadPoolExecutor(6) as pool:
        numbers = list(pool.map(lambda folder: publish(store, folder), folders))
    assert sorted(numbers) == [1, 2, 3, 4, 5, 6]
    for number, folder in zip(numbers, folders, strict=True):
        assert (store.code_dir(number) / "app.py").read_text() == (folder / "app.py").read_text()
