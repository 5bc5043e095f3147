"""A bounded pool of writer threads: finished outputs are encoded, hashed and written while the
main thread renders the next batch. With no threads (`workers=0`) each item is written in the
submitting thread as it is submitted, with the same bookkeeping: where the render already keeps
every core busy (a CPU device), a writer thread only contends with it (sda.runner.write_workers).

- Back-pressure: `make_room` waits while the items waiting to be written hold more than
  `max_pending_bytes` (an item is always let through when nothing is pending), so a slow disk
  slows the rendering instead of queueing a whole sweep in memory.
- What was written comes back in submission order (`collect`, after `wait_for_next`), each item with the
  writer's return value or the exception it raised.
- `abandon()` (after an interruption or a failed write): cancels the writes not yet started,
  waits for those started, each of which is atomic and ends by itself, and returns every
  finished one, so that what is recorded is what is on disk.

Waiting in `make_room` and `wait_for_next` can be interrupted (a signal's exception is raised there, see
sda.interruption); handing an item to the pool and taking finished ones out are not, provided
the caller holds a `deferred()` block around them, as sda.runner does. Signal handlers run in the
main thread only: writers never see a signal.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

K = TypeVar("K")

# Audio waiting to be written, at most (float32 host copies): two GPU batches of 64 x 10 s stereo
# at 96 kHz, or a few long files. Enough to keep every writer busy while the next batch renders.
MAX_PENDING_BYTES = 1 << 30


@dataclass
class Written(Generic[K]):
    """One submitted item after its write: `value` is what the writer returned, or `error` what it raised."""

    key: K
    value: Any = None
    error: BaseException | None = None


@dataclass
class _Task(Generic[K]):
    key: K
    nbytes: int
    future: Future


@dataclass
class WriteTimes:
    """Where a pool's time went, in seconds: `busy_s` summed over writers, `wall_s` the time at
    least one writer was busy, `held_s` the time the submitting thread waited for room
    (back-pressure: rendering held back), `drained_s` the time it waited for the last writes."""

    busy_s: float = 0.0
    wall_s: float = 0.0
    held_s: float = 0.0
    drained_s: float = 0.0
    items: int = 0
    workers: int = 0

    def to_dict(self) -> dict[str, float]:
        return {
            "write_busy_s": self.busy_s,
            "write_wall_s": self.wall_s,
            "write_held_s": self.held_s,
            "write_drained_s": self.drained_s,
            "write_workers": self.workers,
        }


class WritePool(Generic[K]):
    """`write(item)` for each submitted item on `workers` threads, or in the submitting thread
    when `workers` is 0 (see the module docstring)."""

    def __init__(self, write: Callable[[Any], Any], workers: int, max_pending_bytes: int = MAX_PENDING_BYTES) -> None:
        self.write = write
        self.workers = max(0, int(workers))
        self.max_pending_bytes = max_pending_bytes
        self.times = WriteTimes(workers=self.workers)
        self._executor = (
            ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="sda-write") if self.workers else None
        )
        self._tasks: deque[_Task[K]] = deque()
        self._lock = threading.Lock()
        self._running = 0
        self._busy_since = 0.0

    # ------------------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Items submitted and not yet collected."""
        return len(self._tasks)

    def pending_bytes(self) -> int:
        """Bytes of the items not yet written (the memory the queue holds)."""
        return sum(task.nbytes for task in self._tasks if not task.future.done())

    def make_room(self, nbytes: int) -> None:
        """Wait until an item of `nbytes` fits under the budget. Interruptible: call it outside
        a `deferred()` block, then `submit` inside one."""
        started = time.perf_counter()
        try:
            while True:
                waiting = [task.future for task in self._tasks if not task.future.done()]
                if not waiting or self.pending_bytes() + nbytes <= self.max_pending_bytes:
                    return
                wait(waiting, return_when=FIRST_COMPLETED)
        finally:
            self.times.held_s += time.perf_counter() - started

    def submit(self, key: K, item: Any, nbytes: int) -> None:
        """Queue `item` for writing (does not wait: call `make_room` first), or with no threads
        write it now, in this thread. The pool keeps no reference to `item` once it is written."""
        if self._executor is not None:
            self._tasks.append(_Task(key, nbytes, self._executor.submit(self._run, item)))
            return
        future: Future = Future()
        try:
            future.set_result(self._run(item))
        except Exception as error:  # recorded like a writer thread's error; a signal's exception is not caught
            future.set_exception(error)
        self._tasks.append(_Task(key, nbytes, future))

    def collect(self) -> list[Written[K]]:
        """The finished items at the front of the queue, in submission order (an item finished
        early waits for those submitted before it)."""
        finished = []
        while self._tasks and self._tasks[0].future.done():
            finished.append(self._result(self._tasks.popleft()))
        return finished

    def wait_for_next(self) -> None:
        """Wait until the oldest pending item is written (interruptible)."""
        if self._tasks:
            started = time.perf_counter()
            try:
                wait([self._tasks[0].future])
            finally:
                self.times.drained_s += time.perf_counter() - started

    def abandon(self) -> list[Written[K]]:
        """Cancel the writes not started, wait for those started; every item that was written,
        in submission order (cancelled ones are left out: they were never written)."""
        for task in self._tasks:
            task.future.cancel()
        wait([task.future for task in self._tasks])
        finished = [self._result(task) for task in self._tasks if not task.future.cancelled()]
        self._tasks.clear()
        return finished

    def close(self) -> None:
        """Stop the threads (once nothing is pending, or after `abandon`)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------------------------------
    def _run(self, item: Any) -> Any:
        start = time.perf_counter()
        with self._lock:
            if self._running == 0:
                self._busy_since = start
            self._running += 1
        try:
            return self.write(item)
        finally:
            end = time.perf_counter()
            with self._lock:
                self._running -= 1
                self.times.busy_s += end - start
                self.times.items += 1
                if self._running == 0:
                    self.times.wall_s += end - self._busy_since

    @staticmethod
    def _result(task: _Task[K]) -> Written[K]:
        error = task.future.exception()
        return Written(task.key, None if error is not None else task.future.result(), error)
