"""Host memory hygiene between the phases of a step.

glibc keeps memory that PyTorch frees on CPU (activations, log-prob chunks, a pass's temporary weights) in its heap
instead of returning it to the OS, so the resident set grows past what is live and the update's peak lands on top of
the earlier phases' leftovers. `release_freed_memory()` hands the free pages back (`malloc_trim`) before the update.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None (macOS, musl, or no C library found)."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Return the heap's free pages to the OS; True when glibc's malloc_trim ran and released some."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
