"""Handlers in processes of their own through `streamfn run`: ``isolation = "process"`` for Python handlers
(killed at the timeout, restarted after a crash, memory-capped, records' data still bytes), a runtime
whose init fails (the shard shows blocked, and recovers once the code is fixed), and no handler process
outliving streamfn, stopped cleanly or killed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.pipelines import append, daemon, kill, output_objects, write_pipeline
from tests.servers import free_port

ISOLATED = """
import asyncio
import os
import time

from streamfn import Result


def first_time(act, v):
    path = os.path.join(os.environ["MARKERS"], f"{act}-{v}")
    if os.path.exists(path):
        return False
    open(path, "w").close()
    return True


def handle(batch, context):
    items = []
    for record in batch:
        assert isinstance(record.data, bytes), type(record.data)
        data = record.json()
        v, act = data["v"], data.get("act", "")
        if act and first_time(act, v):
            if act == "fail":
                return Result(items, failed=[record.sequence])
            if act == "hang":
                time.sleep(600)
            if act == "crash":
                os._exit(5)
            if act == "hog":
                hog = bytearray(1024 * 1024 * 1024)  # past memory_limit_mb: MemoryError
        items.append({"v": v, "pid": os.getpid(), "t": time.time(), "size": len(record.data),
                      "memory": context.memory_limit_in_mb})
    return items


async def handle_async(batch, context):
    await asyncio.sleep(0)
    return [{"v": record.json()["v"], "pid": os.getpid(), "request": context.aws_request_id} for record in batch]


def handler(event, context):
    import base64, json
    return {"items": [{"v": json.loads(base64.b64decode(r["kinesis"]["data"]))["v"], "pid": os.getpid()}
                      for r in event["Records"]]}
"""


def by_shard(folder: Path) -> dict[str, list[dict[str, Any]]]:
    shards: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for key, items in sorted(output_objects(folder / "out").items()):
        shards[key.split("/")[1]].extend(items)
    return shards


def run_until_caught_up(config: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "streamfn", "run", str(config), "--until-caught-up"],
                          cwd=config.parent, env={**os.environ, "MARKERS": str(config.parent / "markers")},
                          capture_output=True, timeout=120)
    log = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, log[-4000:]
    return log


def isolated(folder: Path, function: str = "handle", extra: str = "", shards: int = 3) -> Path:
    (folder / "markers").mkdir(parents=True)
    settings = f'isolation = "process"\ntimeout = 2\nreport_batch_item_failures = true\n{extra}'
    config = write_pipeline(folder, ISOLATED, shards=shards, handler_module="isolated_handler",
                            batching="max_records = 4", extra=settings)
    text = config.read_text().replace('handler = "isolated_handler:handle"', f'handler = "isolated_handler:{function}"')
    config.write_text(text)
    return config


def test_a_python_handler_in_a_process_is_killed_at_its_timeout_and_restarted_after_a_crash(tmp_path: Path) -> None:
    config = isolated(tmp_path, extra="memory_limit_mb = 400")
    acts = {5: "fail", 11: "hang", 17: "crash", 20: "hog"}
    append(config, [(f"key-{v % 6}", orjson.dumps({"v": v, "act": acts.get(v, "")})) for v in range(24)])
    log = run_until_caught_up(config)

    shards = by_shard(tmp_path)
    assert sorted(i["v"] for items in shards.values() for i in items) == list(range(24))  # no loss, no double
    for items in shards.values():
        assert [i["v"] for i in items] == sorted(i["v"] for i in items)
    assert all(i["size"] == len(orjson.dumps({"v": i["v"], "act": acts.get(i["v"], "")}))
               for items in shards.values() for i in items)
    assert {i["memory"] for items in shards.values() for i in items} == {400}  # Lambda's context, as set
    assert "handler timed out after 2s; its process was killed" in log
    assert "exited with code 5 during the call" in log
    assert "MemoryError" in log  # the 1 GiB allocation hit memory_limit_mb, failing only that batch
    hung = next(shard for shard, items in shards.items() if any(i["v"] == 11 for i in items))
    after_hang = next(i["t"] for i in shards[hung] if i["v"] == 11)
    crashed = next(shard for shard, items in shards.items() if any(i["v"] == 17 for i in items))
    others = [i for shard, items in shards.items() if shard not in (hung, crashed) for i in items]
    if others:
        assert max(i["t"] for i in others) < after_hang  # the hang held only its own shard
    assert len({i["pid"] for i in shards[hung]}) >= 2


@pytest.mark.parametrize("function", ["handle_async", "handler"])
def test_async_and_lambda_interface_handlers_run_isolated_too(tmp_path: Path, function: str) -> None:
    config = isolated(tmp_path, function, extra='interface = "lambda"' if function == "handler" else "", shards=2)
    append(config, [(f"key-{v}", orjson.dumps({"v": v})) for v in range(10)])
    run_until_caught_up(config)
    shards = by_shard(tmp_path)
    assert sorted(i["v"] for items in shards.values() for i in items) == list(range(10))
    assert os.getpid() not in {i["pid"] for items in shards.values() for i in items}
    assert len({i["pid"] for items in shards.values() for i in items}) == 2  # a warm process per shard's lane


def handler_processes(marker: Path) -> list[str]:
    """Worker processes (their command names the handler's folder); not streamfn itself."""
    out = subprocess.run(["pgrep", "-f", f"streamfn.runtime.worker .*{marker}"], capture_output=True, text=True)
    return out.stdout.split()


def wait_for(predicate: Any, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_no_handler_process_outlives_streamfn(tmp_path: Path, sig: int) -> None:
    config = isolated(tmp_path, shards=4)
    append(config, [(f"key-{v}", orjson.dumps({"v": v})) for v in range(40)])
    proc = daemon(config, env={"MARKERS": str(tmp_path / "markers")})
    try:
        wait_for(lambda: sum(len(items) for items in by_shard(tmp_path).values()) == 40)
        workers = handler_processes(tmp_path)
        assert len(workers) == len(by_shard(tmp_path)) >= 2  # one warm worker per lane, waiting for more
    finally:
        kill(proc, sig)
        proc.communicate(timeout=30)
    wait_for(lambda: handler_processes(tmp_path) == [], within=10)


def test_a_runtime_that_fails_to_init_blocks_its_shard_until_fixed(tmp_path: Path) -> None:
    folder = tmp_path
    folder.mkdir(exist_ok=True)
    (folder / "app.py").write_text('raise RuntimeError("boom at import")\n')
    port = free_port()
    config = folder / "pipeline.toml"
    command = orjson.dumps([sys.executable, "-m", "awslambdaric", "app.handler"]).decode()
    config.write_text(
        f'name = "broken"\nhandler = "app.handler"\ninterface = "runtime-api"\ncommand = {command}\n'
        'state_dir = "state"\ntimeout = 5\nshutdown_timeout = 20\n'
        '[source]\ntype = "local"\nstream = "s"\nshards = 1\n[retry]\ninitial_delay = 0.05\nmax_delay = 0.2\n'
        f'[metrics]\nenabled = true\nport = {port}\n[[sinks]]\ntype = "local"\npath = "out"\nfsync = false\n'
    )
    append(config, [("k", orjson.dumps({"v": 1}))])
    proc = daemon(config)
    try:
        def blocked() -> bool:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                return False
            return any(line.startswith("streamfn_shard_blocked{") and line.endswith(" 1.0")
                       for line in text.splitlines())

        wait_for(blocked)
        (folder / "app.py").write_text("def handler(event, context):\n    return {'items': [len(event['Records'])]}\n")
        wait_for(lambda: output_objects(folder / "out") != {})
        assert list(output_objects(folder / "out").values()) == [[1]]
        started = time.monotonic()
    finally:
        kill(proc, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert time.monotonic() - started < 10
    assert b"handler process cannot start: the runtime reported an init error: RuntimeError: boom at import" in err
    assert proc.returncode == 0


@pytest.mark.skipif(shutil.which("curl") is None, reason="the custom runtime needs curl")
def test_stopping_streamfn_kills_a_runtime_and_what_it_started(tmp_path: Path) -> None:
    """A shell runtime hanging in `sleep` (a child of its own): SIGTERM kills the whole process group."""
    shutil.copy2(shutil.which("sleep") or "/bin/sleep", tmp_path / "sleeper")  # named by its path in pgrep
    (tmp_path / "bootstrap").write_text(
        '#!/bin/sh\nAPI="http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime"\n'
        'curl -sS "$API/invocation/next" > /dev/null\n"$LAMBDA_TASK_ROOT/sleeper" 600\n'
    )
    (tmp_path / "bootstrap").chmod(0o755)
    config, bootstrap = tmp_path / "pipeline.toml", tmp_path / "bootstrap"
    config.write_text(
        f'name = "hangs"\nhandler = "function.handler"\ninterface = "runtime-api"\ncommand = ["{bootstrap}"]\n'
        'state_dir = "state"\ntimeout = 600\nshutdown_timeout = 1\n'
        '[source]\ntype = "local"\nstream = "s"\nshards = 1\n'
    )
    append(config, [("k", b"{}")])
    proc = daemon(config)
    try:
        wait_for(lambda: any("sleeper" in p for p in _commands(tmp_path)))
    finally:
        kill(proc, signal.SIGTERM)
        proc.communicate(timeout=30)
    wait_for(lambda: _commands(tmp_path) == [], within=10)


def _commands(marker: Path) -> list[str]:
    out = subprocess.run(["pgrep", "-af", str(marker)], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


WINDOWED = """
import os
from streamfn import Result

def handle(batch, context):
    state = {"count": (context.state or {"count": 0})["count"] + len(batch), "pids": sorted(
        set((context.state or {}).get("pids", [])) | {os.getpid()})}
    items = [{"total": state["count"], "pids": state["pids"]}] if context.is_final else []
    return Result(items=items, state=state)
"""


def test_a_tumbling_windows_state_crosses_to_the_worker_and_back(tmp_path: Path) -> None:
    from streamfn.engine.windows import FINAL_CALL_GRACE

    config = write_pipeline(tmp_path, WINDOWED, shards=1, batching="max_records = 3",
                            extra='isolation = "process"\ntumbling_window = 1')
    time.sleep(1 - time.time() % 1 + 0.05)  # just after a window boundary
    append(config, [("k", b"{}")] * 10)
    time.sleep(1 - time.time() % 1 + FINAL_CALL_GRACE + 0.1)  # the window is over
    run_until_caught_up(config)
    finals = [item for items in output_objects(tmp_path / "out").values() for item in items]
    assert [item["total"] for item in finals] == [10]  # four calls, the state carried through each
    assert os.getpid() not in finals[0]["pids"] and len(finals[0]["pids"]) == 1  # one warm worker


def test_each_lane_of_a_shard_gets_its_own_worker(tmp_path: Path) -> None:
    config = isolated(tmp_path, shards=1, extra="parallelization_factor = 3")
    append(config, [(f"key-{v}", orjson.dumps({"v": v})) for v in range(60)])
    run_until_caught_up(config)
    items = [i for items in by_shard(tmp_path).values() for i in items]
    assert sorted(i["v"] for i in items) == list(range(60))
    assert len({i["pid"] for i in items}) == 3
