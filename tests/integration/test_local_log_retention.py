"""Retention in a running pipeline: records trimmed before the pipeline handled them are skipped
with a warning naming the shard, the range and the count; everything retained is handled."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.pipelines import append, output_objects, run_until_caught_up, write_pipeline

HANDLER = """
def handle(batch, context):
    return [{"seq": r.sequence, "data": r.data.decode()} for r in batch]
"""
DAY = 24 * 3600.0


def test_records_trimmed_before_they_were_handled_are_logged_and_the_rest_handled(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path / "pipe", HANDLER, shards=1)
    unlimited = config.read_text().replace("shards = 1\n", 'shards = 1\nretention_hours = "unlimited"\n')
    default = config.read_text()
    config.write_text(unlimited)
    now = time.time()
    append(config, [("k", b"first")] * 5, arrival_time=now - 3 * DAY)
    run_until_caught_up(config)  # checkpoint at 5
    append(config, [("k", b"old")] * 1500, arrival_time=now - 2 * DAY)  # two blocks, past the 24 h default

    config.write_text(default)
    new = tmp_path / "new.ndjson"
    new.write_text("".join(f'{{"n": {i}}}\n' for i in range(10)))
    produce = subprocess.run([sys.executable, "-m", "streamfn", "produce", str(config), "--input", str(new)],
                             capture_output=True, text=True, timeout=60, check=False)
    assert produce.returncode == 0, produce.stderr  # appends, then trims to the retention

    run = subprocess.run([sys.executable, "-m", "streamfn", "run", str(config), "--until-caught-up"],
                         cwd=config.parent, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    warning = next(line for line in run.stderr.splitlines() if "trimmed by retention" in line)
    assert "shard=shard-0000" in warning and "first_sequence=6" in warning and "last_sequence=1505" in warning
    assert "records=1500" in warning
    handled = sorted(item["seq"] for items in output_objects(config.parent / "out").values() for item in items)
    assert handled == [*range(1, 6), *range(1506, 1516)]
