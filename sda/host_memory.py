"""The C allocator's settings for a process that renders on the CPU.

glibc's malloc serves a block above its mmap threshold (128 KiB at first, rising by itself to
32 MiB at most as mapped blocks are freed) with a fresh mapping and unmaps it when it is freed,
and it returns freed memory at the heap's top to the system past 128 KiB. A CPU render allocates
and frees blocks of up to tens of MB for every item (spectrograms, the phase reconstruction's
buffers), so every item faulted in, and the kernel zeroed, the same memory again: 25,000 to
55,000 minor page faults per 10 s mono item on the 2-core CPU. `keep_freed_memory()` fixes the
threshold at glibc's own ceiling from the start and keeps up to TRIM_THRESHOLD_BYTES of freed
memory in the heap for the next allocation: from the third 10 s item on, next to none fault.
Blocks above 32 MiB are mapped afresh as before (a long file's largest), so the peak resident
memory stays within a few per cent of what it was; between items a process stays at its peak
instead of falling back.

Measured with `python -m sda.bench --paths default --stereo mono` (see the README's throughput
section). Other C libraries (musl, macOS) keep their own policy: the function does nothing there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# mallopt's parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc's own ceiling for its adjusted threshold (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit): above
# every block a 10 s item allocates. A higher one (256 MiB, tried) kept a 600 s file's blocks in
# the heap too, where they fragmented it: peak 2.56 GB against 2.17 GB.
MMAP_THRESHOLD_BYTES = 32 << 20
# The most freed memory kept at the heap's top (mallopt takes a C int).
TRIM_THRESHOLD_BYTES = (1 << 31) - 1


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's thresholds (once per process); True where they were set."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
