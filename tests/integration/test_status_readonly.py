"""``streamfn status`` only reads: it creates no state for a new pipeline and changes no byte of an existing one."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import orjson

from tests.integration.aws_support import client, unique
from tests.integration.test_local_log_upgrade import copy_fixture
from tests.integration.test_ops_cli import CALLS_LOG, ok, streamfn, table_rows
from tests.pipelines import append, write_pipeline


def listing(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file and folder under ``folder``: (mtime ns, size, bytes of files)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        stat = path.stat()
        found[str(path.relative_to(folder))] = (stat.st_mtime_ns, stat.st_size,
                                                path.read_bytes() if path.is_file() else b"")
    return found


def events(start: int, n: int) -> list[tuple[str, bytes]]:
    return [(f"key-{i % 5}", orjson.dumps({"v": i})) for i in range(start, start + n)]


def test_status_of_a_pipeline_that_never_ran_creates_nothing(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, CALLS_LOG, shards=2)
    before = listing(tmp_path)
    out = ok(streamfn("status", str(config), cwd=tmp_path))
    assert listing(tmp_path) == before, "no state folder, log or checkpoint file appears"
    rows = table_rows(out)
    assert sorted(rows) == ["shard-0000", "shard-0001"], out
    assert all(row[2] == "-" for row in rows.values()), "no checkpoint yet"


def test_status_of_a_produced_but_never_run_pipeline_writes_nothing(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, CALLS_LOG, shards=2)
    append(config, events(0, 40))
    before = listing(tmp_path)
    rows = table_rows(ok(streamfn("status", str(config), cwd=tmp_path)))
    assert listing(tmp_path) == before, "no checkpoint file is created beside the log"
    assert sum(int(row[4]) for row in rows.values()) == 40, "the lag is every record"


def test_status_of_a_pipeline_that_ran_leaves_every_state_byte_alone(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, CALLS_LOG, shards=2)
    append(config, events(0, 40))
    ok(streamfn("run", str(config), "--until-caught-up", cwd=tmp_path))
    append(config, events(40, 10))
    # checkpoints written before logs had ids: `run` would adopt the log's id here, status must not
    with sqlite3.connect(tmp_path / "state" / "checkpoints.sqlite3") as db:
        db.execute("DELETE FROM log_identity")
    db.close()
    before = listing(tmp_path)
    rows = table_rows(ok(streamfn("status", str(config), cwd=tmp_path)))
    assert listing(tmp_path) == before, "status wrote to the state folder"
    assert sum(int(row[4]) for row in rows.values()) == 10, rows
    assert all(row[2] != "-" for row in rows.values()), "checkpoints are shown"


def test_status_refuses_checkpoints_of_another_log_without_writing(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, CALLS_LOG, shards=1)
    append(config, events(0, 5))
    ok(streamfn("run", str(config), "--until-caught-up", cwd=tmp_path))
    with sqlite3.connect(tmp_path / "state" / "checkpoints.sqlite3") as db:
        db.execute("UPDATE log_identity SET log_id = 'another'")
    db.close()
    before = listing(tmp_path)
    result = streamfn("status", str(config), cwd=tmp_path)
    assert result.returncode != 0 and "checkpoints reset" in result.stderr, result.stderr
    assert listing(tmp_path) == before


async def test_status_does_not_create_a_missing_lease_table(moto_endpoint: str, aws_env: dict[str, str],
                                                            tmp_path: Path) -> None:
    table = unique("status-leases")
    leases = f'[checkpoints]\ntype = "dynamodb"\ntable = "{table}"\nendpoint_url = "{moto_endpoint}"\n'
    config = write_pipeline(tmp_path, CALLS_LOG, shards=2, extra=leases)
    out = await asyncio.to_thread(lambda: ok(streamfn("status", str(config), cwd=tmp_path)))
    assert sorted(table_rows(out)) == ["shard-0000", "shard-0001"], out
    async with client("dynamodb", moto_endpoint) as dynamodb:
        assert table not in (await dynamodb.list_tables())["TableNames"], "status created the lease table"


def test_status_of_a_previous_release_state_adopts_and_upgrades_nothing(tmp_path: Path) -> None:
    config = copy_fixture(tmp_path)  # a log of an older layout, checkpoints with no log identity
    before = listing(config.parent)
    rows = table_rows(ok(streamfn("status", str(config), cwd=tmp_path)))
    assert listing(config.parent) == before, "status upgraded the log or adopted its identity"
    assert {shard: cells[2] for shard, cells in rows.items()} == {"shard-0000": "301", "shard-0001": "299"}
