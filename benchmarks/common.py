"""What every benchmark process shares: the records, the prepared log, and the figures of a process.

Every contender runs in a fresh process over a log written beforehand by another process (a
warm heap would hide the page faults a fresh ``streamfn run`` pays), and reports its own CPU
time, page faults and peak RSS (VmHWM) beside its wall-clock rate.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import itertools
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streamfn.connectors.local.log import LocalLog, shard_id_of
from streamfn.connectors.local.produce import synthetic_clicks

SEED = 7
CHUNK = 10_000
STREAM = "bench"
#: Exit status of a contender that cannot run here (a package or server missing): reported as skipped.
SKIPPED = 77


def event_chunks(count: int, seed: int = SEED, size: int = CHUNK) -> Iterator[list[tuple[str, bytes]]]:
    """The benchmark's records (~246-byte JSON click events), in chunks, so a large run never holds them all."""
    records = synthetic_clicks(count, seed)
    while chunk := list(itertools.islice(records, size)):
        yield chunk


def prepare_log(path: Path, records: int, shards: int) -> None:
    """Write ``records`` click events over ``shards`` shards of stream ``bench`` into a fresh log file."""
    log = LocalLog(path)
    try:
        log.create_stream(STREAM, shards)
        for chunk in event_chunks(records):
            log.append(STREAM, chunk)
    finally:
        log.close()  # the last connection closing folds the WAL into the file: one file to copy


def logged_data(log: LocalLog, shards: int) -> list[bytes]:
    """Every record's data in the log, shard by shard."""
    datas: list[bytes] = []
    for index in range(shards):
        after = 0
        while records := log.read(STREAM, shard_id_of(index), after, 50_000):
            datas.extend(r.data for r in records)
            after = records[-1].sequence
    return datas


def status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmHWM: peak RSS since exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Span:
    """Wall time, CPU time and page faults of this process over a span of code."""

    def __enter__(self) -> Span:
        self._usage = resource.getrusage(resource.RUSAGE_SELF)
        self._cpu = time.process_time()
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._wall
        self.cpu_seconds = time.process_time() - self._cpu
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.minor_faults = usage.ru_minflt - self._usage.ru_minflt
        self.major_faults = usage.ru_majflt - self._usage.ru_majflt

    def figures(self, records: int) -> dict[str, Any]:
        """records/s, CPU µs per record, page faults per million records, peak RSS."""
        return {
            "records": records, "seconds": self.seconds, "cpu_seconds": self.cpu_seconds,
            "records_per_s": records / self.seconds if self.seconds else 0.0,
            "cpu_us_per_record": self.cpu_seconds / records * 1e6 if records else 0.0,
            "faults_per_m_records": (self.minor_faults + self.major_faults) / records * 1e6 if records else 0.0,
            "peak_rss_mib": status_kib("VmHWM") / 1024,
        }


def git_commit() -> str:
    here = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return done.stdout.strip() + ("-dirty" if dirty else "")


def versions() -> dict[str, str]:
    """Python, the machine, and every package a contender uses (absent ones left out)."""
    found = {"python": platform.python_version(), "platform": platform.platform(),
             "cpus": str(os.cpu_count()), "executable": sys.executable}
    for package in ("streamfn", "msgspec", "orjson", "uvloop", "aiokafka", "confluent-kafka", "bytewax",
                    "aiobotocore", "matplotlib"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    return found
