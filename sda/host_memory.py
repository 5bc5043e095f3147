"""The C allocator's settings for a process that renders on the CPU.

glibc's malloc serves a block above its mmap threshold (128 KiB at first, rising by itself to
32 MiB at most) with a fresh mapping and unmaps it when it is freed. A CPU render allocates and
frees blocks of that size and larger for every item (spectrograms, the phase reconstruction's
buffers), so every item faulted in, and the kernel zeroed, the same memory again: 25,000 to
55,000 minor page faults per 10 s mono item on the 2-core CPU. `keep_freed_memory()` serves
blocks up to MMAP_THRESHOLD_BYTES from the heap and keeps up to TRIM_THRESHOLD_BYTES of freed
memory there for the next allocation: from the third item on, none fault. The peak resident
memory is what it was (the freed memory is kept, not added to); a process's memory stays at its
peak until it ends instead of falling between items.

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
# Above the largest block a batch of 10 s items allocates; a 600 s file's largest blocks are
# still mapped afresh (a few per file, where a 10 s item's were dozens).
MMAP_THRESHOLD_BYTES = 256 << 20
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
