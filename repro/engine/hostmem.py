"""Host memory: keep freed heap memory for the next training step instead of returning it.

A training step allocates and frees the same temporaries every time (activations, gathered
columns, accumulators, layout copies). glibc returns freed memory at the top of the heap to the
system once more than a dynamic threshold is free, and serves large requests with fresh mmaps, so
every step page-faults its temporaries back in, which on a VM costs a large share of a small
update (the measurement is in the README's Performance section).

``keep_freed_memory`` sets glibc's mmap threshold to its largest value (32 MiB: larger requests
still get their own mapping) and the trim threshold to 1 GiB, so steps reuse the heap. The
process's resident memory then stays at its peak between steps, which is what ``repro info``
plans for anyway. It applies when the backend is chosen (``select_backend``), on glibc only.
Opt out with ``REPRO_MALLOC=system``; a user's own ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_`` or malloc ``GLIBC_TUNABLES`` are left to rule.
"""
from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's maximum (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
TRIM_THRESHOLD = 1 << 30

_applied: bool | None = None


def _user_chose() -> bool:
    if os.environ.get("REPRO_MALLOC", "").lower() == "system":
        return True
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return True
    return "malloc" in os.environ.get("GLIBC_TUNABLES", "")


def keep_freed_memory() -> bool:
    """Apply the thresholds once per process; True when they are in effect."""
    global _applied
    if _applied is None:
        _applied = False
        if not _user_chose() and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                mallopt = ctypes.CDLL(None).mallopt
            except (OSError, AttributeError):
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
