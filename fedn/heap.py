"""glibc allocator policies: a server's resident memory close to what it holds, a load generator's
page faults few.

glibc keeps freed memory in its heap for reuse, and raises its mmap threshold after large frees,
so a server that streams and folds models of tens of MB keeps its peak as resident memory. The
combiner calls :func:`trim` after each large update and round, so its resident size follows what
it holds.

glibc also gives each new thread its own heap ("arena"), up to eight per core. A chunk that one of
gRPC's threads receives, and a worker thread folds, goes back to the receiving thread's arena when
freed, where the worker's own allocations cannot reuse it. The process then holds the high-water
mark of every arena at once. :func:`limit_arenas` caps their number when the process starts, before
it has threads.

A load generator wants the opposite of a server: :func:`keep_freed_memory` makes it reuse the pages
of buffers it freed instead of faulting in fresh ones for every model it receives and sends.

Elsewhere (musl, macOS) these are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

__all__ = ["keep_freed_memory", "limit_arenas", "trim"]

logger = logging.getLogger(__name__)

# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


@functools.cache
def _libc_function(name: str, argtypes: tuple, restype):
    lib = ctypes.util.find_library("c")
    if not lib:
        return None
    try:
        fn = getattr(ctypes.CDLL(lib), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = list(argtypes)
    fn.restype = restype
    return fn


def trim() -> bool:
    """Return free heap pages to the OS; True if anything was released."""
    fn = _libc_function("malloc_trim", (ctypes.c_size_t,), ctypes.c_int)
    return bool(fn(0)) if fn is not None else False


def _mallopt(param: int, value: int) -> bool:
    fn = _libc_function("mallopt", (ctypes.c_int, ctypes.c_int), ctypes.c_int)
    return fn is not None and bool(fn(param, value))


def limit_arenas(count: int) -> bool:
    """Let the threads started from now on share at most ``count`` heap arenas (0: leave the C
    library's default, or ``MALLOC_ARENA_MAX``). Call it early: a thread that already made an arena
    (numpy's BLAS threads start when numpy is imported) keeps it. True if applied."""
    if count <= 0:
        return False
    if not _mallopt(_M_ARENA_MAX, count):
        logger.debug("heap arenas left to the C library: mallopt(M_ARENA_MAX) is not available here")
        return False
    return True


def keep_freed_memory() -> bool:
    """Serve every allocation from one heap that is never trimmed, so freed buffers are reused, not
    unmapped and faulted in again (each fresh page of a 40 MB buffer is a page fault). For a load
    generator only: a server would keep its peak resident. Call it before any thread starts: with no
    mmap, a thread's own arena could not hold a buffer over 64 MiB. True if applied."""
    return _mallopt(_M_ARENA_MAX, 1) and _mallopt(_M_MMAP_MAX, 0) and _mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
