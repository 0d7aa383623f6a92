"""Memory at the edges of bulk work: the cyclic GC held off while building, free heap handed back.

A build of 100,000 routes makes hundreds of thousands of small objects and no cycles; the
collections their allocation alone triggers cost as much as the work (measured: 100,000 routes
built in 3.0 s instead of 6.7). The shell holds it off around the core's work (watch.engine:
Build and build; nginx.apply's check) and around the registry's full reads; the core never
touches it.
"""

from __future__ import annotations

import ctypes
import functools
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def no_gc() -> Iterator[None]:
    """Hold the cyclic garbage collector off for the block (as it was before, after it)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def release_free_memory() -> bool:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim); True if some were.

    A long-running process that built 100,000 routes once keeps the heap that build needed:
    freed, but scattered between what is kept, so the system still counts it as the
    process's own (about 75 MB at 100,000 routes). Elsewhere than glibc this does nothing."""
    trim = _malloc_trim()
    return trim is not None and bool(trim(0))


# glibc's mallopt parameter (malloc.h) and the size from which a block gets its own mapping.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024


def keep_large_blocks_apart() -> bool:
    """Give every block of MMAP_THRESHOLD bytes or more its own mapping, for the life of the
    process (glibc's mallopt); True if set.

    glibc raises that threshold each time such a block is freed, up to 32 MB, so the watcher's
    big strings (the index of deployments and deployments.json, tens of MB at 100,000 routes,
    rewritten on every change) come to be carved from the heap, where the small objects kept
    around them stop malloc_trim from handing the pages back. Measured with `bench/live.py
    --routes 100000 --events 20`, the watcher idle after the events: VmRSS 420 MB without,
    406 MB with; its peak (VmHWM) 655 MB without, 567 MB with. Elsewhere than glibc this does
    nothing."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        function = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    function.argtypes = [ctypes.c_size_t]  # int malloc_trim(size_t pad)
    function.restype = ctypes.c_int
    trim: Callable[[int], int] = function
    return trim
