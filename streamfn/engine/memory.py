"""Process-wide settings that keep the per-record path off the allocator and the garbage collector.

Measured on the JSON drain (benchmarks.local_log, B = 1000, a fresh process): glibc's default
heap grows and trims around the ~250 KB blocks read from the local log and the decoded values,
and served large buffers through mmap, so every batch paid page faults (~135k per million
records). With a fixed mmap threshold and a higher trim threshold those buffers reuse heap
memory: ~10k faults per million records, ~15 % less CPU. The heap still gives memory back once
more than ``TRIM_THRESHOLD`` is free at its top.

The collector: objects made at start-up (modules, config, pipeline) are frozen out of every
collection, and the youngest generation is collected less often, since handlers' decoded values
make many short-lived containers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys

#: glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 32 << 20
#: Allocations between two collections of the youngest generation (CPython's default: 700).
GC_GEN0_THRESHOLD = 20_000

_tuned = False


def tune_process() -> None:
    """Once per process: the allocator and collector settings above. ``streamfn run`` calls it
    before its pipelines open; a program embedding the engine owns its process and decides."""
    global _tuned
    if _tuned:
        return
    _tuned = True
    _tune_malloc()
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def _tune_malloc() -> None:
    """glibc only (musl and macOS have no mallopt with these knobs): elsewhere nothing changes."""
    if not sys.platform.startswith("linux"):
        return
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
