"""State written by earlier releases resumes exactly with this code.

Each fixture was built by its release (see its ``make_state.py``): 600 records handled, a batch
recorded as pending with no output (a crash before its sink write), 400 records not handled yet.
``prev_release`` (commit 2aff918) predates the log identity: neither the log nor the checkpoints
carry one. ``release_be736e6`` is the release before the connector layout and the columnar batch;
``release_49e03b2`` wrote local log layout 1, read here as it is (a log holding both layouts:
``tests/unit/test_columnar_batch.py``); ``release_8a49744`` wrote layout 2; ``release_d0eb09d``,
the previous release, layout 3 (small blocks merged).
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import orjson
import pytest

from streamfn.connectors.local.log import LocalLog
from tests.pipelines import output_objects, run_until_caught_up

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
RELEASES = ["prev_release", "release_be736e6", "release_49e03b2", "release_8a49744", "release_d0eb09d"]
PRODUCED = 1000

COUNTING_HANDLER = '''
"""The fixture's handler, also noting every record this run handles."""

from pathlib import Path

import orjson

CALLS = Path(__file__).parent / "calls.ndjson"


def handle(batch, context):
    with CALLS.open("ab") as calls:
        calls.write(b"".join(orjson.dumps([r.shard_id, r.sequence]) + b"\\n" for r in batch))
    return [{"shard": r.shard_id, "seq": r.sequence, "n": r.json()["n"]} for r in batch]
'''


def copy_fixture(tmp_path: Path, release: str = "prev_release") -> Path:
    folder = tmp_path / "prev"
    shutil.copytree(FIXTURES / release, folder, ignore=shutil.ignore_patterns("__pycache__"))
    # A module name of its own per release: runs share this process, and its sys.modules.
    module = f"counting_handler_{release}"
    (folder / f"{module}.py").write_text(COUNTING_HANDLER)
    config = folder / "pipeline.toml"
    text = config.read_text().replace('handler = "prev_handler:handle"', f'handler = "{module}:handle"')
    # The fixture's records age: keep them all, as the previous release did (it had no retention).
    if "retention_hours" not in text:
        text = text.replace("shards = 2\n", 'shards = 2\nretention_hours = "unlimited"\n')
    config.write_text(text)
    return config


@pytest.mark.parametrize("release", RELEASES)
def test_previous_release_state_resumes_exactly(tmp_path: Path, release: str) -> None:
    config = copy_fixture(tmp_path, release)
    folder = config.parent
    before = {path.relative_to(folder): path.read_bytes() for path in (folder / "out").rglob("*.ndjson")}
    with sqlite3.connect(folder / "state" / "checkpoints.sqlite3") as db:
        resume_after = {shard: orjson.loads(state)["position"][0] for shard, state in
                        db.execute("SELECT shard_id, state FROM checkpoints")}
    assert resume_after == {"shard-0000": "301", "shard-0001": "299"}

    run_until_caught_up(config)

    log = LocalLog(folder / "state" / "log.sqlite3")
    tips = {shard: log.last_seq("events", shard) for shard in log.shard_ids("events")}
    log_id = log.log_id
    log.close()
    calls = [tuple(orjson.loads(line)) for line in (folder / "calls.ndjson").read_bytes().splitlines()]
    # Nothing handled before is handled again, nothing unhandled is skipped.
    expected = [(shard, seq) for shard, tip in tips.items() for seq in range(int(resume_after[shard]) + 1, tip + 1)]
    assert sorted(calls) == sorted(expected)
    assert len(calls) == len(set(calls))
    # The old objects are untouched; the pending batch is formed again with the bounds it had.
    assert all((folder / name).read_bytes() == data for name, data in before.items())
    objects = output_objects(folder / "out")
    replayed = objects["prev/shard-0001/00000000000000000300-00000000000000000349.ndjson"]
    assert [item["seq"] for item in replayed] == list(range(300, 350))
    numbers = [item["n"] for items in objects.values() for item in items]
    assert sorted(numbers) == list(range(PRODUCED))
    # The old checkpoints adopted the log's new identity.
    with sqlite3.connect(folder / "state" / "checkpoints.sqlite3") as db:
        assert db.execute("SELECT pipeline, log_id FROM log_identity").fetchall() == [("prev", log_id)]
