"""Local sink, stdout sink and local destination on real folders: nothing leaves the root, output JSON
cannot hold fails the batch (SinkError), and a full or read-only disk is retried (RetryableError)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from streamfn.connectors.local.destination import LocalDestination
from streamfn.connectors.local.sink import LocalSink
from streamfn.connectors.stdout.sink import StdoutSink
from streamfn.errors import SinkError
from streamfn.protocols.destination import FailedBatch
from streamfn.protocols.sink import SinkBatch
from streamfn.records import Position, Record


def batch(items: list[Any], shard_id: str = "shard-0000", pipeline: str = "p") -> SinkBatch:
    return SinkBatch(pipeline=pipeline, stream="s", shard_id=shard_id, first=Position(1), last=Position(2),
                     first_arrival=0.0, items=items)


def failure(shard_id: str = "shard-0000", error: str = "boom") -> FailedBatch:
    record = Record(shard_id=shard_id, sequence=1, partition_key="k", data=b"x", arrival_time=0.0)
    return FailedBatch(pipeline="p", stream="s", source_kind="local", shard_id=shard_id,
                       condition="RetryAttemptsExhausted", records=[record], invoke_count=3, error=error)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def jail(tmp_path: Path) -> tuple[Path, Path]:
    """A sink root three levels down, so an escape would land in a folder the test can see."""
    root = tmp_path / "a" / "b" / "root"
    return tmp_path, root


@pytest.mark.parametrize("shard_id", ["../../../escape", "../x", "a/../../y", "/abs"])
async def test_a_crafted_shard_id_cannot_leave_the_sink_root(jail: tuple[Path, Path], shard_id: str) -> None:
    top, root = jail
    sink = LocalSink(root, key="{shard_id}/{first}-{last}.ndjson")
    await sink.open()
    with pytest.raises(SinkError, match="refusing to write outside"):
        await sink.write(batch([{"v": 1}], shard_id=shard_id))
    assert files_under(top) == []


async def test_a_template_that_skipped_validation_cannot_leave_the_root(jail: tuple[Path, Path]) -> None:
    top, root = jail
    sink = LocalSink(root, key="../../../{shard_id}/{first}-{last}.ndjson")
    await sink.open()
    with pytest.raises(SinkError, match=r"'\.\.' segment"):
        await sink.write(batch([{"v": 1}]))
    assert files_under(top) == []


async def test_keys_inside_the_root_are_written(jail: tuple[Path, Path]) -> None:
    _, root = jail
    sink = LocalSink(root, key="{pipeline}/{shard_id}/{first}..{last}.ndjson")
    await sink.open()
    await sink.write(batch([{"v": 1}, b'{"raw":true}'], shard_id="x..y"))
    [written] = files_under(root)
    assert written.relative_to(root).as_posix() == "p/x..y/00000000000000000001..00000000000000000002.ndjson"
    assert [json.loads(line) for line in written.read_text().splitlines()] == [{"v": 1}, {"raw": True}]


@pytest.mark.parametrize("item", [
    Decimal("1.5"), {1, 2}, {"blob": b"\x00"}, object(), {"n": float("nan"), "big": 2**70}, ["\udcff"],
])
async def test_output_json_cannot_hold_fails_the_batch(tmp_path: Path, item: Any) -> None:
    sink = LocalSink(tmp_path / "out")
    await sink.open()
    with pytest.raises(SinkError, match="output item 1 cannot be written as JSON"):
        await sink.write(batch([{"ok": 2**70}, item]))
    assert files_under(tmp_path) == []


async def test_big_integers_still_fall_back_to_the_standard_library(tmp_path: Path) -> None:
    sink = LocalSink(tmp_path)
    await sink.write(batch([{"seq": 2**185}, {"small": 1}]))
    [written] = files_under(tmp_path)
    assert written.read_text() == f'{{"seq":{2**185}}}\n{{"small":1}}\n'


async def test_stdout_sink_refuses_what_json_cannot_hold(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    with pytest.raises(SinkError, match="Decimal"):
        await StdoutSink().write(batch([Decimal("1")]))
    assert capsysbinary.readouterr().out == b""


def test_stdout_sink_on_a_full_device_is_retryable() -> None:
    code = textwrap.dedent("""
        import asyncio
        from streamfn.errors import RetryableError
        from streamfn.records import Position
        from streamfn.protocols.sink import SinkBatch
        from streamfn.connectors.stdout.sink import StdoutSink
        batch = SinkBatch(pipeline="p", stream="s", shard_id="0", first=Position(1), last=Position(1),
                          first_arrival=0.0, items=[{"v": 1}])
        try:
            asyncio.run(StdoutSink().write(batch))
        except RetryableError as exc:
            raise SystemExit(f"retryable {exc.kind}")
    """)
    with open("/dev/full", "wb") as full:
        done = subprocess.run([sys.executable, "-c", code], stdout=full, stderr=subprocess.PIPE, text=True,
                              timeout=60)
    assert done.stderr.strip().splitlines()[-1] == "retryable storage"


@pytest.mark.parametrize("shard_id", ["../../../../../../escape", ".."])
async def test_a_crafted_shard_id_cannot_leave_the_destination_root(jail: tuple[Path, Path], shard_id: str) -> None:
    top, root = jail
    destination = LocalDestination(root)
    await destination.open()
    with pytest.raises(SinkError, match="refusing to write outside"):
        await destination.send(failure(shard_id))
    assert files_under(top) == []


async def test_destination_spells_out_an_error_message_json_cannot_hold(tmp_path: Path) -> None:
    destination = LocalDestination(tmp_path)
    await destination.send(failure(error="bad byte \udcff"))
    [written] = files_under(tmp_path)
    assert json.loads(written.read_bytes())["errorMessage"] == "bad byte \\udcff"


# ---- a real full and read-only disk: a small tmpfs in a private mount namespace ----------------------------------

DISK_SCRIPT = """
import asyncio, errno, json, subprocess, sys
from pathlib import Path
from streamfn.errors import RetryableError
from streamfn.protocols.destination import FailedBatch
from streamfn.connectors.local.destination import LocalDestination
from streamfn.records import Position, Record
from streamfn.protocols.sink import SinkBatch
from streamfn.connectors.local.sink import LocalSink

disk = Path(sys.argv[1])
results = {}

def attempt(name, coroutine):
    try:
        asyncio.run(coroutine)
        results[name] = "ok"
    except RetryableError as exc:
        results[name] = f"retryable {exc.kind} {errno.errorcode[exc.__cause__.errno]}"
    except Exception as exc:
        results[name] = f"{type(exc).__name__}: {exc}"

def batch(n):
    return SinkBatch(pipeline="p", stream="s", shard_id="shard-0", first=Position(n), last=Position(n),
                     first_arrival=0.0, items=[{"v": "x" * 2000}] * 8)

record = Record(shard_id="shard-0", sequence=1, partition_key="k", data=b"x" * 4000, arrival_time=0.0)
failed = FailedBatch(pipeline="p", stream="s", source_kind="local", shard_id="shard-0",
                     condition="RetryAttemptsExhausted", records=[record], invoke_count=1)
sink, destination = LocalSink(disk / "out"), LocalDestination(disk / "dlq")
asyncio.run(sink.open()); asyncio.run(destination.open())
filler = disk / "filler"
with open(filler, "wb", buffering=0) as out:
    try:
        while True:
            out.write(b"\\0" * 4096)
    except OSError:
        pass
attempt("sink when full", sink.write(batch(1)))
attempt("destination when full", destination.send(failed))
filler.unlink()
attempt("sink after space returns", sink.write(batch(1)))
attempt("destination after space returns", destination.send(failed))
subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
attempt("sink when read-only", sink.write(batch(2)))
attempt("destination when read-only", destination.send(failed))
results["files"] = sorted(str(p.relative_to(disk)) for p in disk.rglob("*") if p.is_file())
print(json.dumps(results))
"""


def _private_tmpfs_works() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    probe = subprocess.run([unshare, "-rm", "sh", "-c", "mount -t tmpfs -o size=16k tmpfs /mnt"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not _private_tmpfs_works(), reason="needs `unshare -rm` and tmpfs mounts (user namespaces)")
def test_full_then_read_only_disk_is_retryable_and_recovers(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    shell = 'mount -t tmpfs -o size=96k tmpfs "$1" && exec "$2" -c "$3" "$1"'
    done = subprocess.run(["unshare", "-rm", "sh", "-c", shell, "sh", str(disk), sys.executable, DISK_SCRIPT],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert results.pop("files") == [
        "dlq/aws/lambda/p/shard-0/1970/01/01/00000000000000000001_0-00000000000000000001_0.json",
        "out/p/shard-0/00000000000000000001-00000000000000000001.ndjson",
    ]  # no temp file left behind by the failed writes
    assert results == {
        "sink when full": "retryable storage ENOSPC",
        "destination when full": "retryable storage ENOSPC",
        "sink after space returns": "ok",
        "destination after space returns": "ok",
        "sink when read-only": "retryable storage EROFS",
        "destination when read-only": "retryable storage EROFS",
    }


async def test_a_key_the_folder_layout_refuses_fails_the_batch(tmp_path: Path) -> None:
    (tmp_path / "p").write_text("a file where the key wants a folder")
    with pytest.raises(SinkError, match="change the key template"):
        await LocalSink(tmp_path).write(batch([{"v": 1}]))
    long_name = LocalSink(tmp_path, key="{shard_id}/" + "x" * 300 + "{first}-{last}")
    with pytest.raises(SinkError, match="change the key template"):
        await long_name.write(batch([{"v": 1}]))
