"""Operator polish through the real CLI (``python -m streamfn`` in a subprocess): missing extras, closed
pipes, validate's errors and warnings, init's next steps, log formats, --fail-if-blocked-for."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest

from tests.logfmt import parse_logfmt
from tests.pipelines import REPO, append, stderr_on_a_terminal, write_pipeline

BLOCKER = '''
import sys

class _NoExtras:
    """Importing the aws and kafka extras' libraries fails, as when they are not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("aiobotocore", "botocore", "aiokafka"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoExtras())
'''

RETURNS_NOTHING = "def handle(batch, context):\n    return []\n"
FAILING = "def handle(batch, context):\n    raise RuntimeError('always fails: the database is down')\n"


def streamfn(*args: str, cwd: Path, env: dict[str, str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "streamfn", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def config_file(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "h.py").write_text(RETURNS_NOTHING)
    path = folder / f"{name}.toml"
    path.write_text(f'name = "{name}"\nhandler = "h:handle"\n' + textwrap.dedent(body))
    return path


AWS_CONFIG = """
[source]
type = "kinesis"
stream = "s"
region = "us-east-1"
[checkpoints]
type = "dynamodb"
table = "leases"
region = "us-east-1"
[[sinks]]
type = "local"
path = "out"
"""
KAFKA_CONFIG = """
[source]
type = "kafka"
topic = "t"
bootstrap_servers = "127.0.0.1:1"
group_id = "g"
[checkpoints]
type = "kafka"
[[sinks]]
type = "local"
path = "out"
"""
AWS_SINK_ONLY = """
[source]
type = "local"
stream = "s"
[[sinks]]
type = "local"
path = "out"
[[sinks]]
type = "s3"
bucket = "b"
region = "us-east-1"
"""


@pytest.fixture
def without_extras(tmp_path: Path) -> dict[str, str]:
    """An environment in which aiobotocore, botocore and aiokafka cannot be imported."""
    folder = tmp_path / "no-extras"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(BLOCKER)
    return {"PYTHONPATH": f"{folder}{os.pathsep}{REPO}"}


VERBS = [["validate", "{config}"], ["run", "{config}", "--until-caught-up"], ["status", "{config}"],
         ["tail", "{config}", "--count", "1"], ["replay", "{config}", "--from", "trim_horizon"]]


@pytest.mark.parametrize("verb", [*VERBS, ["checkpoints", "show", "{config}"]], ids=lambda v: v[0])
def test_every_verb_names_the_missing_aws_extra(tmp_path: Path, without_extras: dict[str, str],
                                                verb: list[str]) -> None:
    config = config_file(tmp_path, "kin", AWS_CONFIG)
    done = streamfn(*(a.format(config=config) for a in verb), cwd=tmp_path, env=without_extras, timeout=30)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "pip install 'streamfn[aws]'" in done.stderr


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: v[0])
def test_every_verb_names_the_missing_kafka_extra(tmp_path: Path, without_extras: dict[str, str],
                                                  verb: list[str]) -> None:
    config = config_file(tmp_path, "kaf", KAFKA_CONFIG)
    done = streamfn(*(a.format(config=config) for a in verb), cwd=tmp_path, env=without_extras, timeout=30)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "pip install 'streamfn[kafka]'" in done.stderr


def test_validate_names_the_file_and_field_that_needs_the_extra(tmp_path: Path,
                                                                without_extras: dict[str, str]) -> None:
    config = config_file(tmp_path, "mixed", AWS_SINK_ONLY)
    done = streamfn("validate", str(config), cwd=tmp_path, env=without_extras)
    assert done.returncode == 2
    assert f"{config}: field `sinks[1].type`: needs the 'aws' extra" in done.stderr
    plain = config_file(tmp_path / "plain", "plain", AWS_SINK_ONLY.split("[[sinks]]\ntype = \"s3\"")[0])
    assert streamfn("validate", str(plain), cwd=tmp_path, env=without_extras).returncode == 0, \
        "a local pipeline needs no extra"


def test_tail_into_head_ends_quietly(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, RETURNS_NOTHING, shards=2)
    append(config, [(f"k{i}", orjson.dumps({"v": i, "pad": "x" * 60})) for i in range(5000)])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    tail = subprocess.Popen([sys.executable, "-m", "streamfn", "tail", str(config), "--from", "trim_horizon"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert tail.stdout is not None
    head = subprocess.run(["head", "-n", "3"], stdin=tail.stdout, capture_output=True, timeout=30, check=True)
    tail.stdout.close()
    try:
        _, stderr = tail.communicate(timeout=30)
    finally:
        if tail.poll() is None:
            tail.kill()
    assert len(head.stdout.splitlines()) == 3
    assert tail.returncode == 0, stderr.decode()
    assert b"BrokenPipe" not in stderr and b"Traceback" not in stderr and b"Exception ignored" not in stderr


def test_validate_and_run_refuse_a_bad_handler_alike(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, RETURNS_NOTHING, handler_module="real_handler")
    config.write_text(config.read_text().replace("real_handler:handle", "real_handler:missing"))
    checked = streamfn("validate", str(config), cwd=tmp_path)
    run = streamfn("run", str(config), "--until-caught-up", cwd=tmp_path)
    for done in (checked, run):
        assert done.returncode == 2, done.stderr
        assert f"{config}: field `handler`:" in done.stderr and "'missing'" in done.stderr
    config.write_text(config.read_text().replace("real_handler:missing", "no_such_module:handle"))
    checked, run = (streamfn(*verb, str(config), cwd=tmp_path) for verb in (["validate"], ["run"]))
    assert checked.returncode == run.returncode == 2
    assert all("field `handler`" in d.stderr and "no_such_module" in d.stderr for d in (checked, run))


def test_a_pipeline_without_sinks_is_warned_about(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, RETURNS_NOTHING, sinks="")
    append(config, [("k", b"{}")])
    for verb in (["validate"], ["run", "--until-caught-up"]):
        done = streamfn(*verb, str(config), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "has no [[sinks]]" in done.stderr, verb
    with_sink = write_pipeline(tmp_path / "sunk", RETURNS_NOTHING)
    assert "[[sinks]]" not in streamfn("validate", str(with_sink), cwd=tmp_path).stderr


def test_init_prints_the_next_steps(tmp_path: Path) -> None:
    done = streamfn("init", "starter", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    config = Path("starter") / "pipeline.toml"
    steps = done.stdout.split("Next steps:", 1)[1]
    for verb in ("validate", "produce", "run", "status"):
        assert f"streamfn {verb} {config}" in steps
    lines = [line.split("#", 1)[0].split() for line in steps.splitlines() if line.strip().startswith("streamfn ")]
    for words in lines[:3]:  # the steps, typed as printed, work in order
        assert streamfn(*words[1:], cwd=tmp_path).returncode == 0, words


# -- log formats ----------------------------------------------------------------------------------
NOISY = '''
calls = 0

def handle(batch, context):
    global calls
    calls += 1
    if calls == 1:
        raise ValueError('bad "value" = x\\nsecond line \\\\ backslash')
    return [{"v": 1}]
'''


def test_json_mode_writes_only_json_lines_on_stderr(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, NOISY, shards=2, sinks="")
    produced = streamfn("produce", str(config), "--count", "50", "--log-format", "json", cwd=tmp_path)
    run = streamfn("run", str(config), "--until-caught-up", "--log-format", "json", "--log-level", "WARNING",
                   cwd=tmp_path)
    bad = streamfn("--log-format", "json", "validate", str(tmp_path / "missing.toml"), cwd=tmp_path)
    usage = streamfn("run", str(config), "--no-such-flag", "--log-format=json", cwd=tmp_path)
    assert produced.returncode == 0 and run.returncode == 0 and bad.returncode == usage.returncode == 2
    docs = [orjson.loads(line) for done in (produced, run, bad, usage) for line in done.stderr.splitlines()]
    assert all(isinstance(doc, dict) and {"time", "level", "message"} <= doc.keys() for doc in docs)
    messages = [doc["message"] for doc in docs]
    assert any(doc.get("records") == 50 for doc in docs), "produce says what it appended, as JSON"
    assert any("has no [[sinks]]" in m for m in messages) and any("batch failed" in m for m in messages)
    assert any(doc["level"] == "error" and "missing.toml" in doc["message"] for doc in docs)
    assert any("--no-such-flag" in doc["message"] and "usage" in doc for doc in docs)
    run_levels = {orjson.loads(line)["level"] for line in run.stderr.splitlines()}
    assert run_levels == {"warning", "error"}, "--log-level after the verb is honoured (the handler's failure: error)"


def test_text_mode_is_valid_logfmt(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, NOISY, shards=2)
    append(config, [(f"k{i}", b"{}") for i in range(20)])
    run = streamfn("run", str(config), "--until-caught-up", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    parsed = [parse_logfmt(line) for line in lines]
    assert all({"time", "level", "logger", "msg"} <= pairs.keys() for pairs in parsed)
    failed = next(pairs for pairs in parsed if pairs["msg"] == "batch failed; will retry")
    assert 'bad "value" = x\nsecond line \\ backslash' in failed["error"], "quotes, '=', newlines survive"
    assert {pairs["msg"] for pairs in parsed} >= {"running", "stopped"}


def test_log_level_has_choices(tmp_path: Path) -> None:
    done = streamfn("schema", "--log-level", "verbose", cwd=tmp_path)
    assert done.returncode == 2 and "invalid choice" in done.stderr and "debug" in done.stderr
    assert streamfn("schema", "--log-level", "WARNING", cwd=tmp_path).returncode == 0


def _produce_on_a_terminal(config: Path, *flags: str) -> str:
    return stderr_on_a_terminal(config.parent, *flags, "produce", str(config), "--count", "20000")


def test_produce_draws_its_bar_on_a_terminal_in_text_mode_only(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, RETURNS_NOTHING, shards=2)
    assert "\r[" in _produce_on_a_terminal(config) and "20,000/20,000 records" in _produce_on_a_terminal(config)
    shown = _produce_on_a_terminal(config, "--log-format", "json")
    assert "\r" not in shown.replace("\r\n", "\n")
    assert [orjson.loads(line)["records"] for line in shown.splitlines()] == [20000]
    piped = streamfn("produce", str(config), "--count", "10", cwd=tmp_path)
    assert "\r" not in piped.stderr and "appended 10 records" in piped.stderr


# -- --fail-if-blocked-for ------------------------------------------------------------------------
def test_fail_if_blocked_for_ends_a_stuck_catch_up_naming_the_shard(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, FAILING, shards=2)
    append(config, [("k", b'{"v": 1}')])
    started = time.monotonic()
    done = streamfn("run", str(config), "--until-caught-up", "--fail-if-blocked-for", "1", cwd=tmp_path, timeout=30)
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    verdict = next(line for line in done.stderr.splitlines() if line.startswith("error:"))
    assert "shard-000" in verdict and "always fails: the database is down" in verdict
    assert "--fail-if-blocked-for 1" in verdict
    assert elapsed < 15, f"took {elapsed:.1f}s"


def test_fail_if_blocked_for_exits_1_past_a_stuck_handler_call(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, "import time\n\ndef handle(batch, context):\n    time.sleep(60)\n",
                            shards=1, extra="timeout = 0.5\nshutdown_timeout = 1\n")
    append(config, [("k", b'{"v": 1}')])
    done = streamfn("run", str(config), "--until-caught-up", "--fail-if-blocked-for", "1", cwd=tmp_path, timeout=30)
    assert done.returncode == 1, done.stderr
    verdict = next(line for line in done.stderr.splitlines() if line.startswith("error:"))
    assert "shard-0000" in verdict and "handler stuck" in verdict, "the abandoned call does not turn it into exit 0"


def test_fail_if_blocked_for_lets_a_healthy_catch_up_succeed(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, RETURNS_NOTHING, shards=2)
    append(config, [(f"k{i}", b"{}") for i in range(200)])
    done = streamfn("run", str(config), "--until-caught-up", "--fail-if-blocked-for", "5", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    bad = streamfn("run", str(config), "--fail-if-blocked-for", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "more than 0 seconds" in bad.stderr
