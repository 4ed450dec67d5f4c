"""Start-up objects are frozen out of the collector once the pipelines are open, and only in a
process the engine tuned (a program embedding the engine keeps its collector as it is)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import gc
from streamfn.engine import memory
memory.freeze_startup()
assert gc.get_freeze_count() == 0, "froze in a process nobody tuned"
memory.tune_process()
assert gc.get_freeze_count() == 0, "froze before the pipelines opened"
opened = [object() for _ in range(3)] + [[] for _ in range(1000)]  # what opening the pipelines made
memory.freeze_startup()
frozen = gc.get_freeze_count()
assert frozen >= 1000, frozen
memory.freeze_startup()
assert gc.get_freeze_count() == frozen, "froze twice"
assert gc.get_threshold()[0] == memory.GC_GEN0_THRESHOLD
"""


def test_start_up_objects_are_frozen_once_after_the_pipelines_open() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
