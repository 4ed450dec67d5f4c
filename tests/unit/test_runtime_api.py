"""The Runtime API server over real HTTP on 127.0.0.1, what crosses the worker boundary, and the config
rules of handlers in processes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfn.config import LoadedPipeline, load_pipeline, pipeline_config_type
from streamfn.engine.invoke import Invoker
from streamfn.errors import ConfigError, HandlerError
from streamfn.handler_api import Context, Result
from streamfn.lambda_shapes import kinesis_event
from streamfn.records import Batch, Position, Record
from streamfn.runtime import wire
from streamfn.runtime.api import MAX_RESPONSE_BYTES, InvocationError, RuntimeApi
from streamfn.runtime.build import check_start
from streamfn.runtime.slot import LambdaJson, ProcessExited, WorkerMsgpack

BASE = "/2018-06-01/runtime"


async def serving() -> tuple[RuntimeApi, str]:
    api = RuntimeApi()
    return api, f"http://{await api.start()}{BASE}"


async def test_next_hands_out_the_invocation_with_lambdas_headers_and_response_answers_it() -> None:
    api, url = await serving()
    async with aiohttp.ClientSession() as http:
        polling = asyncio.create_task(http.get(f"{url}/invocation/next"))
        await asyncio.wait_for(asyncio.shield(api.ready), 5)  # the runtime asked: its init is over
        answer = api.invoke("req-1", b'{"Records": []}', {"Lambda-Runtime-Aws-Request-Id": "req-1",
                                                          "Lambda-Runtime-Deadline-Ms": "1542409706888"})
        response = await polling
        assert response.status == 200
        assert await response.read() == b'{"Records": []}'
        assert response.headers["Lambda-Runtime-Aws-Request-Id"] == "req-1"
        assert response.headers["Lambda-Runtime-Deadline-Ms"] == "1542409706888"
        posted = await http.post(f"{url}/invocation/req-1/response", data=b'{"batchItemFailures": []}')
        assert posted.status == 202
        assert await answer == b'{"batchItemFailures": []}'
        again = await http.post(f"{url}/invocation/req-1/response", data=b"{}")
        assert again.status == 400 and (await again.json())["errorType"] == "InvalidRequestID"
    api.abort(ProcessExited("done"))


async def test_an_invocation_queued_before_the_runtime_asks_is_handed_out_when_it_does() -> None:
    api, url = await serving()
    answer = api.invoke("early", b"{}", {"Lambda-Runtime-Aws-Request-Id": "early"})
    async with aiohttp.ClientSession() as http:
        response = await http.get(f"{url}/invocation/next")
        assert response.headers["Lambda-Runtime-Aws-Request-Id"] == "early"
        await http.post(f"{url}/invocation/early/error", data=orjson.dumps(
            {"errorMessage": "bad record", "errorType": "ValueError"}),
            headers={"Lambda-Runtime-Function-Error-Type": "Runtime.Handled"})
    with pytest.raises(InvocationError) as failed:
        await answer
    assert (failed.value.error_type, failed.value.message) == ("ValueError", "bad record")
    api.abort(ProcessExited("done"))


async def test_an_error_without_a_document_is_named_by_its_header() -> None:
    api, url = await serving()
    answer = api.invoke("r", b"{}", {})
    async with aiohttp.ClientSession() as http:
        await http.post(f"{url}/invocation/r/error", data=b"it broke",
                        headers={"Lambda-Runtime-Function-Error-Type": "Unhandled"})
    with pytest.raises(InvocationError, match=r"^Unhandled: it broke$"):
        await answer
    api.abort(ProcessExited("done"))


async def test_init_errors_unknown_paths_and_oversized_answers() -> None:
    api, url = await serving()
    async with aiohttp.ClientSession() as http:
        init = await http.post(f"{url}/init/error", data=b'{"errorMessage": "no module app", "errorType": '
                                                          b'"Runtime.ImportModuleError"}')
        assert init.status == 202
        error = await asyncio.wait_for(asyncio.shield(api.init_error), 5)
        assert str(error) == "Runtime.ImportModuleError: no module app"
        assert (await http.get(f"{url}/nothing/here")).status == 405
        assert (await http.post(f"{url}/nothing/here")).status == 404
        answer = api.invoke("big", b"{}", {})
        too_big = await http.post(f"{url}/invocation/big/response", data=b"x" * (MAX_RESPONSE_BYTES + 1))
        assert too_big.status == 413
        assert not answer.done()  # the runtime may still post an answer that fits
    api.abort(ProcessExited("gone"))
    with pytest.raises(ProcessExited):
        await answer


async def test_an_answer_given_up_on_is_refused() -> None:
    api, url = await serving()
    api.invoke("late", b"{}", {})
    api.forget("late")
    async with aiohttp.ClientSession() as http:
        response = await http.post(f"{url}/invocation/late/response", data=b"{}")
        assert response.status == 400
    api.abort(ProcessExited("done"))


# -- what crosses the boundary -----------------------------------------------------------------------

attributes = st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5), max_size=3)
records = st.lists(st.builds(
    Record, shard_id=st.just("shard-1"), sequence=st.integers(0, 2**128), partition_key=st.text(max_size=8),
    data=st.binary(max_size=64), arrival_time=st.floats(0, 2e9), sub_sequence=st.integers(0, 5),
    attributes=st.none() | attributes,
), max_size=8)


@settings(max_examples=60, deadline=None)
@given(records=records, attempt=st.integers(0, 100))
def test_a_batch_crosses_to_the_worker_unchanged(records: list[Record], attempt: int) -> None:
    context = Context(pipeline="p", shard_id="shard-1", attempt=attempt, timeout=30, state={"n": 1},
                      window=(1.0, 2.0), is_final=True)
    body = wire.encoder.encode(wire.invocation_of(Batch("shard-1", records), context, None))
    invocation = wire.invocation_decoder.decode(body)
    batch = invocation.payload()
    assert isinstance(batch, Batch) and batch.records == records
    assert all(isinstance(r.data, bytes) for r in batch)
    restored = invocation.context("req-9")
    assert (restored.aws_request_id, restored.attempt, restored.state, restored.window, restored.is_final) == (
        "req-9", attempt, {"n": 1}, (1.0, 2.0), True)
    assert 0 < restored.remaining() <= 30


@pytest.mark.parametrize("answer", [None, [1, {"a": b"x"}], Result([1], failed=[3], state={"s": 1}), "text", {"k": 1}])
def test_answers_cross_back_as_the_handler_gave_them(answer: Any) -> None:
    restored = wire.answer_decoder.decode(wire.encoder.encode(wire.answer_of(answer))).restore()
    if isinstance(answer, Result):
        assert (restored.items, restored.failed, restored.state) == (answer.items, ["3"], answer.state)
    else:
        assert restored == answer


def test_a_kinesis_sized_failed_sequence_crosses_back() -> None:
    sequence = 49590338271490256608559692538361571095921575989136588898
    answer = wire.answer_of(Result([], failed=[sequence]))
    restored = wire.answer_decoder.decode(wire.encoder.encode(answer)).restore()
    batch = Batch("shard-1", [Record("shard-1", sequence, "k", b"", 0.0)])
    assert invoker("native").interpret(restored, batch).failed_at == Position(sequence)


def test_a_generator_crosses_as_a_list() -> None:
    answer = wire.answer_of(i * 2 for i in range(3))
    assert wire.answer_decoder.decode(wire.encoder.encode(answer)).restore() == [0, 2, 4]


def invoker(interface: str, report_failures: bool = True) -> Invoker:
    return Invoker(None, interface=interface, timeout=5, report_failures=report_failures,  # type: ignore[arg-type]
                   lambda_event=lambda batch: kinesis_event(batch, "arn:aws:kinesis:local:0:stream/s", "local"))


BATCH = Batch("shard-1", [Record("shard-1", n, "k", b"{}", 0.0) for n in (10, 11, 12)])


def test_a_runtimes_json_answer_means_what_it_means_for_the_lambda_interface() -> None:
    codec, calls = LambdaJson(), invoker("runtime-api")
    event = orjson.loads(codec.encode(calls, BATCH, Context(pipeline="p", shard_id="shard-1", attempt=0, timeout=5)))
    assert [r["kinesis"]["sequenceNumber"] for r in event["Records"]] == ["10", "11", "12"]
    assert codec.decode(calls, b'{"batchItemFailures": [{"itemIdentifier": "11"}]}', BATCH).failed_at == Position(11)
    assert codec.decode(calls, b"", BATCH).failed_at is None  # an empty answer is success
    with pytest.raises(HandlerError, match="not a batchItemFailures answer"):
        codec.decode(calls, b"SUCCESS", BATCH)  # not JSON: unusable when failures are reported
    assert codec.decode(invoker("runtime-api", report_failures=False), b"SUCCESS", BATCH).failed_at is None


def test_a_worker_answer_that_is_not_msgpack_fails_the_batch() -> None:
    with pytest.raises(HandlerError, match="not an answer"):
        WorkerMsgpack().decode(invoker("native"), b"\xc1garbage", BATCH)


# -- config ------------------------------------------------------------------------------------------

BASE_CONFIG = {"name": "p", "handler": "app.handler", "source": {"type": "local", "stream": "s"}}


@pytest.mark.parametrize(("settings_", "field"), [
    ({"interface": "runtime-api"}, "command"),
    ({"interface": "runtime-api", "command": [""]}, "command"),
    ({"interface": "lambda", "command": ["./bootstrap"]}, "command"),
    ({"memory_limit_mb": 256}, "memory_limit_mb"),
    ({"isolation": "process", "memory_limit_mb": -1}, "memory_limit_mb"),
    ({"isolation": "process", "handler_version": 2}, "handler_version"),
    ({"interface": "runtime-api", "command": ["./bootstrap"], "handler_version": "live"}, "handler_version"),
])
def test_invalid_combinations_are_refused_naming_the_field(settings_: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as refused:
        msgspec.convert({**BASE_CONFIG, **settings_}, pipeline_config_type())
    assert refused.value.field == field


@pytest.mark.parametrize("settings_", [
    {"interface": "runtime-api", "command": ["./bootstrap"], "memory_limit_mb": 512},
    {"isolation": "process", "memory_limit_mb": 512},
    {"isolation": "process", "interface": "lambda"},
])
def test_valid_process_settings_are_accepted(settings_: dict[str, Any]) -> None:
    config = msgspec.convert({**BASE_CONFIG, **settings_}, pipeline_config_type())
    assert config.memory_limit_mb == settings_.get("memory_limit_mb", 0)


def write_config(folder: Path, settings_: str) -> LoadedPipeline:
    (folder / "pipeline.toml").write_text(
        f'name = "p"\n{settings_}\n[source]\ntype = "local"\nstream = "s"\n')
    return load_pipeline(folder / "pipeline.toml")


def test_run_and_validate_find_the_runtime_program_without_starting_it(tmp_path: Path) -> None:
    missing = write_config(tmp_path, 'handler = "app.handler"\ninterface = "runtime-api"\ncommand = ["./bootstrap"]')
    with pytest.raises(ConfigError) as refused:
        check_start(missing)
    assert refused.value.field == "command" and "./bootstrap" in str(refused.value)
    (tmp_path / "bootstrap").write_text("#!/bin/sh\n")
    with pytest.raises(ConfigError):
        check_start(missing)  # there, but not executable
    (tmp_path / "bootstrap").chmod(0o755)
    assert check_start(missing)
    bare = write_config(tmp_path, 'handler = "a.b"\ninterface = "runtime-api"\ncommand = ["bootstrap"]')
    with pytest.raises(ConfigError, match=r"did you mean './bootstrap'\?"):
        check_start(bare)  # a bare name is looked up on PATH, as a shell would
    on_path = write_config(tmp_path, 'handler = "a.b"\ninterface = "runtime-api"\ncommand = ["sh", "-c", "true"]')
    assert check_start(on_path)


def test_an_isolated_handlers_module_is_looked_up_not_imported(tmp_path: Path) -> None:
    (tmp_path / "side_effect.py").write_text("raise SystemExit('imported in the engine')\n")
    assert check_start(write_config(tmp_path, 'handler = "side_effect:handle"\nisolation = "process"'))
    with pytest.raises(ConfigError) as refused:
        check_start(write_config(tmp_path, 'handler = "nowhere_to_be_found:handle"\nisolation = "process"'))
    assert refused.value.field == "handler"
    assert not check_start(write_config(tmp_path, 'handler = "side_effect:handle"'))  # in-process: imported
