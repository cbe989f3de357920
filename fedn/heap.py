"""Give freed heap memory back to the operating system after large, short-lived buffers.

glibc keeps freed memory in its heap for reuse, and raises its mmap threshold after large frees,
so a server that streams and folds models of tens of MB keeps its peak as resident memory. The
combiner calls :func:`trim` after each large update and round, so its resident size follows what
it holds. Elsewhere (musl, macOS) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["trim"]


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def trim() -> bool:
    """Return free heap pages to the OS; True if anything was released."""
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False
