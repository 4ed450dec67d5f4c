"""Helpers for testing your own handlers: in-memory parts, and a pipeline run over records you give.

    from streamfn.testing import check_file, run_records
    result = await run_records("pipeline.toml", [("user-1", b'{"n": 1}')])
    assert result.items == [{"n": 2}]

``streamfn test pipeline.toml --input records.jsonl --expect expected.jsonl`` does the same from
the command line (see README, "Testing handlers").
"""

from __future__ import annotations

from .memory import MemoryCheckpointStore, MemoryDestination, MemoryShardReader, MemorySink, MemorySource
from .run import (
    Comparison,
    RunResult,
    check_file,
    compare,
    read_expected,
    read_records,
    run_file,
    run_records,
    write_expected,
)

__all__ = [
    "Comparison",
    "MemoryCheckpointStore",
    "MemoryDestination",
    "MemoryShardReader",
    "MemorySink",
    "MemorySource",
    "RunResult",
    "check_file",
    "compare",
    "read_expected",
    "read_records",
    "run_file",
    "run_records",
    "write_expected",
]
