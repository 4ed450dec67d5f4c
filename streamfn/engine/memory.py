"""Process-wide settings that keep the per-record path off the allocator and the garbage collector.

Measured on the JSON drain (benchmarks.local_log, B = 1000, a fresh process): glibc's default
heap grows and trims around the ~250 KB blocks read from the local log and the decoded values,
and served large buffers through mmap, so every batch paid page faults (~135k per million
records). With a fixed mmap threshold and a higher trim threshold those buffers reuse heap
memory: ~10k faults per million records, ~15 % less CPU. The heap still gives memory back once
more than ``TRIM_THRESHOLD`` is free at its top.

The collector: the youngest generation is collected less often, since handlers' decoded values
make many short-lived containers; and objects made at start-up (modules, config, and the opened
pipelines: their connectors, clients and shard runners) are frozen out of every collection, so
that the collections the per-batch path triggers do not walk them again and again. The freeze
comes once the pipelines are open (:func:`freeze_startup`): frozen before, everything the
pipelines made while opening would stay in the collected generations.
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
_frozen = False


def tune_process() -> None:
    """Once per process: the allocator and collector settings above. ``streamfn run`` calls it
    before its pipelines open, and :func:`freeze_startup` once they are open; a program embedding
    the engine owns its process and decides."""
    global _tuned
    if _tuned:
        return
    _tuned = True
    _tune_malloc()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def freeze_startup() -> None:
    """Freeze what start-up made, once the pipelines are open (only in a process :func:`tune_process`
    tuned, and once: a pipeline opened later, on a reload, stays collectable)."""
    global _frozen
    if not _tuned or _frozen:
        return
    _frozen = True
    gc.collect()
    gc.freeze()


def glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc on Linux (the allocator knobs here are glibc's), else None."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def _tune_malloc() -> None:
    """glibc only (musl and macOS have no mallopt with these knobs): elsewhere nothing changes."""
    libc = glibc()
    if libc is None:
        return
    try:
        mallopt = libc.mallopt
    except AttributeError:  # a C library without it
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
