"""The C allocator's settings for training and explaining on a CPU.

glibc's ``malloc`` serves every block of 128 KiB or more (the threshold grows with use, up to 32 MiB) by a fresh
``mmap`` and gives it back to the system when it is freed, and trims the heap's free top above 128 KiB. A training
step of a small network frees and re-allocates the same activation buffers of a few MiB every step, so each step
faults every page of them in again: about 330,000 page faults per 20 steps of the quickstart's ResNet-10-T at batch
64, and at two threads the faults contend for the process's memory map (docs/performance.md). Raising both thresholds
keeps freed blocks in the heap for the next step: the faults vanish, and the step runs faster.

The setting lasts for the process and its forks; ``GLASSZOO_MALLOC_TUNING=0`` leaves the allocator alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 20  # blocks below this come from the heap and are reused (larger ones are still mapped)
TRIM_THRESHOLD = 512 << 20  # free memory kept at the heap's top before it is given back

_applied = False


def keep_freed_memory() -> bool:
    """Tell glibc to keep freed blocks for reuse (see the module docstring); True when the setting is in force.

    Idempotent. Does nothing (False) off Linux, with a C library other than glibc, or with
    ``GLASSZOO_MALLOC_TUNING=0``. The cost is memory held rather than returned: at most ``TRIM_THRESHOLD`` of free
    heap per allocator arena.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get("GLASSZOO_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
