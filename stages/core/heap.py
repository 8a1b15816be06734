"""Give freed heap memory back to the operating system between chunks of a long loop.

glibc's malloc raises its mmap threshold as large blocks are freed, so later large blocks (torch and numpy
buffers of each chunk) come from the heap, whose freed pages it keeps: a loop of same-sized chunks then grows
its resident memory chunk after chunk although nothing stays allocated. ``release()`` calls ``malloc_trim(0)``,
which returns every free page of every arena; elsewhere (musl, macOS) it does nothing. Call it once per chunk,
not per small allocation: it walks the heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _trim():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None) if libc is not None else None


def release() -> bool:
    """Return free heap pages to the OS; True when the C library could (glibc's ``malloc_trim``)."""
    trim = _trim()
    if trim is None:
        return False
    trim(0)
    return True
