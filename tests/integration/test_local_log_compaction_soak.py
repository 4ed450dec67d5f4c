"""Compaction under crashes: 50 SIGKILLs of the daemon while a producer in another process appends
chunks small enough that the log merges them as it goes; every record's output exactly once after."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.integration.test_soak_controls import PLAIN, SLEEP, Soak, assert_exact, handler, live_groups, pipeline

#: Appended records per chunk: ~20 per shard, so a shard's blocks are small and merge eight at a time.
CHUNK = 40


@pytest.mark.slow
def test_soak_with_merging_appends(tmp_path: Path) -> None:
    initial = 20_000
    soak = Soak(initial=live_groups(0, initial),
                later=[live_groups(initial + c * CHUNK, CHUNK) for c in range(40)], every=1.2, seed=31)
    config = pipeline(tmp_path, handler(PLAIN, SLEEP=SLEEP))
    outcome = soak.run(config)
    assert_exact("merging appends", outcome, soak.total)
    with sqlite3.connect(tmp_path / "state" / "log.sqlite3") as db:
        # 40 chunks made 80 small blocks (two shards); merged blocks merge again while small.
        merged, small = db.execute("SELECT count(*) FILTER (WHERE substr(payload, 1, 1) = x'95'),"
                                   " count(*) FILTER (WHERE first_seq > 10000) FROM blocks").fetchone()
    assert merged >= 2 and small < 20, f"{merged} merged blocks, {small} blocks of the later chunks"
