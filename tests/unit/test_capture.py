"""A call's writes, in whatever pieces they come, become its lines exactly."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from hypothesis import given
from hypothesis import strategies as st

from streamfn.engine import capture
from streamfn.handler_api import Context

PIECES = st.lists(st.tuples(st.sampled_from(["stdout", "stderr"]), st.text(st.sampled_from("ab \n"), max_size=12)),
                  max_size=30)


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def collected() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("streamfn.handler")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@given(PIECES)
def test_pieces_become_the_same_lines_per_stream(pieces: list[tuple[str, str]]) -> None:
    with collected() as lines:
        written_by(pieces, lines)


def written_by(pieces: list[tuple[str, str]], lines: Lines) -> None:
    call = capture.CallScope("p", "s", (), Context(pipeline="p", shard_id="s", attempt=0, timeout=1.0))
    for stream, text in pieces:
        call.write(stream, text)
    call.finish(0.001, None)
    written = [(r.__dict__["stream"], r.getMessage()) for r in lines.records if "stream" in r.__dict__]
    for stream in ("stdout", "stderr"):
        whole = "".join(text for name, text in pieces if name == stream)
        expected = whole.split("\n")
        if expected[-1] == "":
            expected.pop()  # a final newline ends the last line; it does not start an empty one
        assert [text for name, text in written if name == stream] == expected
    assert bool(written) == any(r.getMessage().startswith("START ") for r in lines.records)
    assert all(r.__dict__["request_id"] == call.context.aws_request_id for r in lines.records)
