"""How handler answers are read: native results, Lambda batchItemFailures, timeouts, load errors."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from streamfn import Batch, Context, Position, Record, Result
from streamfn.engine.invoke import Invoker, load_handler
from streamfn.errors import AnswerError, HandlerError, HandlerLoadError


def batch_of(*sequences: int) -> Batch:
    return Batch("s", [Record("s", seq, "k", b"{}", 0.0) for seq in sequences])


def invoker(handler: Any, *, interface: str = "native", report: bool = True, timeout: float = 5.0) -> Invoker:
    return Invoker(handler, interface=interface, timeout=timeout, report_failures=report,  # type: ignore[arg-type]
                   lambda_event=lambda b: {"Records": [{"kinesis": {"sequenceNumber": r.identifier}} for r in b]})


def context() -> Context:
    return Context(pipeline="p", shard_id="s", attempt=0, timeout=5.0)


async def call(handler: Any, batch: Batch | None = None, **kw: Any) -> Any:
    return await invoker(handler, **kw).call(batch or batch_of(1, 2, 3), context())


@pytest.mark.parametrize("answer", [None, "", {}, [], {"batchItemFailures": []}, {"batchItemFailures": None}])
async def test_lambda_success_answers(answer: Any) -> None:
    result = await call(lambda event, ctx: answer, interface="lambda")
    assert result.failed_at is None


@pytest.mark.parametrize(
    "failures",
    [
        [{"itemIdentifier": ""}],
        [{"itemIdentifier": None}],
        [{"foo": "2"}],
        [{"itemIdentifier": 123}],
        "2",
        ["2"],
    ],
)
async def test_lambda_malformed_failures_fail_the_batch(failures: Any) -> None:
    with pytest.raises(HandlerError):
        await call(lambda event, ctx: {"batchItemFailures": failures}, interface="lambda")


async def test_lambda_lowest_failure_is_numeric_not_textual() -> None:
    batch = batch_of(9, 10, 11)
    answer = {"batchItemFailures": [{"itemIdentifier": "11"}, {"itemIdentifier": "10"}]}
    result = await call(lambda event, ctx: answer, batch, interface="lambda")
    assert result.failed_at == Position(10)


async def test_a_zero_padded_identifier_names_its_record() -> None:
    # DynamoDB Streams spells sequence numbers zero-padded (21 to 40 digits) in the event
    batch = batch_of(9, 10, 11)
    answer = {"batchItemFailures": [{"itemIdentifier": "000000000000000000010"}]}
    result = await call(lambda event, ctx: answer, batch, interface="lambda")
    assert result.failed_at == Position(10)
    with pytest.raises(AnswerError):
        await call(lambda event, ctx: {"batchItemFailures": [{"itemIdentifier": "0000012"}]}, batch, interface="lambda")


async def test_failures_ignored_without_report_batch_item_failures() -> None:
    answer = {"batchItemFailures": [{"itemIdentifier": "nonsense"}]}
    result = await call(lambda event, ctx: answer, interface="lambda", report=False)
    assert result.failed_at is None


async def test_native_result_with_failed_sequences() -> None:
    result = await call(lambda batch, ctx: Result(items=[1], failed=[3, 2]))
    assert result.items == [1]
    assert result.failed_at == Position(2)


async def test_native_unknown_failed_sequence_fails_the_batch() -> None:
    with pytest.raises(HandlerError, match="not a record of this batch"):
        await call(lambda batch, ctx: Result(failed=[99]))


@pytest.mark.parametrize("answer", ["text", b"bytes", {"a": 1}, 42])
async def test_native_answer_of_wrong_type_is_a_failure(answer: Any) -> None:
    with pytest.raises(HandlerError, match="return a list of items"):
        await call(lambda batch, ctx: answer)


async def test_sync_handler_runs_off_the_event_loop() -> None:
    loop_thread: list[bool] = []

    def handler(batch: Batch, ctx: Context) -> list[int]:
        try:
            asyncio.get_running_loop()
            loop_thread.append(True)
        except RuntimeError:
            loop_thread.append(False)
        return [len(batch)]

    result = await call(handler)
    assert result.items == [3]
    assert loop_thread == [False]


async def test_async_handler_timeout_is_a_failure() -> None:
    async def slow(batch: Batch, ctx: Context) -> None:
        await asyncio.sleep(5)

    started = time.monotonic()
    with pytest.raises(HandlerError, match="timed out"):
        await call(slow, timeout=0.1)
    assert time.monotonic() - started < 2


async def test_sync_handler_timeout_is_a_failure() -> None:
    with pytest.raises(HandlerError, match="timed out"):
        await call(lambda batch, ctx: time.sleep(1), timeout=0.1)


async def test_exception_becomes_handler_error_naming_it() -> None:
    def boom(batch: Batch, ctx: Context) -> None:
        raise KeyError("user_id")

    with pytest.raises(HandlerError, match="KeyError"):
        await call(boom)


def test_load_handler_errors_name_the_reference(tmp_path: Path) -> None:
    (tmp_path / "mod_ok.py").write_text("def handle(batch, ctx):\n    return []\nVALUE = 3\n")
    assert load_handler("mod_ok:handle", [tmp_path])(None, None) == []
    with pytest.raises(HandlerLoadError, match="module:function"):
        load_handler("mod_ok", [tmp_path])
    with pytest.raises(HandlerLoadError, match="cannot import module 'no_such_mod'"):
        load_handler("no_such_mod:handle", [tmp_path])
    with pytest.raises(HandlerLoadError, match="has no 'missing'"):
        load_handler("mod_ok:missing", [tmp_path])
    with pytest.raises(HandlerLoadError, match="not callable"):
        load_handler("mod_ok:VALUE", [tmp_path])
