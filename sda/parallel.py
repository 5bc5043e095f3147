"""Host work on threads: how many cores this process may use, and an ordered parallel map.

Threads, not processes: the heavy host work of a run (hashing, libsndfile through cffi, numpy,
zlib, file I/O) releases the GIL, so threads use the cores without copying audio between
processes, and signals stay with the main thread (sda.interruption).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Past this many threads, verification and pictures gain nothing on the machines measured
# (16 cores) and a shared file system only sees more contention.
MAX_HOST_THREADS = 16


def host_cpus() -> int:
    """Cores this process may run on (its affinity mask where the system has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def host_threads() -> int:
    """Threads for host work that runs while nothing else does (verification, report pictures)."""
    return min(host_cpus(), MAX_HOST_THREADS)


def parallel_map(function: Callable[[T], R], items: Iterable[T], threads: int | None = None) -> list[R]:
    """`[function(item) for item in items]` on up to `threads` threads (default `host_threads()`),
    results in the order of `items`. An exception (a call's, or a signal's in the main thread)
    cancels the calls not started and is raised once those started have ended."""
    items = list(items)
    threads = min(threads or host_threads(), len(items))
    if threads <= 1:
        return [function(item) for item in items]
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sda-host")
    try:
        results = list(pool.map(function, items))
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results
