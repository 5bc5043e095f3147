"""The write pool: a stalled disk holds the submitter back instead of queueing everything in
memory, results come back in submission order with their errors, and abandoning finishes the
writes started and drops only those never started.

The writer here is a function that waits on an event where a real one waits on the disk. With no
threads (workers=0) the pool writes each item in the submitting thread, with the same bookkeeping."""

from __future__ import annotations

import threading
import time

import pytest

from sda.write_pool import WritePool


class Disk:
    """Records what was written; `stall()` makes every write wait until `release()`."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()
        self.started: list[int] = []
        self.written: list[int] = []
        self.lock = threading.Lock()

    def stall(self) -> None:
        self.open.clear()

    def release(self) -> None:
        self.open.set()

    def write(self, item: int) -> str:
        with self.lock:
            self.started.append(item)
        assert self.open.wait(30)
        if item < 0:
            raise OSError(28, "No space left on device")
        with self.lock:
            self.written.append(item)
        return f"file {item}"


def submit(pool: WritePool, item: int, nbytes: int) -> None:
    pool.make_room(nbytes)
    pool.submit(item, item, nbytes)


def wait_until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert condition()


def test_a_stalled_disk_holds_the_submitter_back_within_the_byte_budget():
    disk = Disk()
    disk.stall()
    pool = WritePool(disk.write, workers=2, max_pending_bytes=250)
    try:
        submit(pool, 1, 100)
        submit(pool, 2, 100)
        third = threading.Thread(target=submit, args=(pool, 3, 100))
        third.start()
        time.sleep(0.3)
        assert third.is_alive(), "a third item would pass the budget: submit must wait"
        assert pool.pending == 2 and pool.pending_bytes() == 200
        disk.release()
        third.join(10)
        assert not third.is_alive()
        while pool.pending:
            pool.wait_for_next()
            pool.collect()
        assert sorted(disk.written) == [1, 2, 3]
        assert pool.times.held_s > 0.2  # the wait is counted as the rendering held back
    finally:
        disk.release()
        pool.close()


def test_an_item_larger_than_the_budget_passes_when_nothing_is_pending():
    disk = Disk()
    pool = WritePool(disk.write, workers=1, max_pending_bytes=10)
    try:
        submit(pool, 1, 1000)
        pool.wait_for_next()
        assert [(w.key, w.value) for w in pool.collect()] == [(1, "file 1")]
    finally:
        pool.close()


def test_results_come_back_in_submission_order_with_their_errors():
    disk = Disk()
    pool = WritePool(disk.write, workers=3)
    try:
        for item in (5, -1, 7):
            submit(pool, item, 1)
        collected = []
        while pool.pending:
            pool.wait_for_next()
            collected += pool.collect()
        assert [w.key for w in collected] == [5, -1, 7]
        assert [w.value for w in collected] == ["file 5", None, "file 7"]
        assert isinstance(collected[1].error, OSError) and collected[0].error is collected[2].error is None
        assert pool.times.items == 3 and pool.times.busy_s >= pool.times.wall_s > 0
    finally:
        pool.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_abandoning_finishes_the_writes_started_and_drops_those_never_started(workers):
    disk = Disk()
    disk.stall()
    pool = WritePool(disk.write, workers=workers)
    try:
        for item in range(1, 6):
            submit(pool, item, 1)
        wait_until(lambda: len(disk.started) == workers)
        threading.Timer(0.2, disk.release).start()  # the started writes end by themselves
        finished = pool.abandon()
        assert [w.key for w in finished] == list(range(1, workers + 1))
        assert all(w.error is None for w in finished)
        time.sleep(0.1)
        assert sorted(disk.written) == list(range(1, workers + 1)), "a cancelled write must never start"
        assert pool.pending == 0
    finally:
        disk.release()
        pool.close()


def test_with_no_threads_each_item_is_written_in_the_submitting_thread_as_it_is_submitted():
    disk = Disk()
    threads = []

    def write(item: int) -> str:
        threads.append(threading.current_thread())
        return disk.write(item)

    pool = WritePool(write, workers=0, max_pending_bytes=10)
    try:
        submit(pool, 5, 1000)  # never held back: nothing is ever left pending
        assert disk.written == [5], "written before submit returns"
        submit(pool, -1, 1000)
        submit(pool, 7, 1000)
        assert threads == [threading.main_thread()] * 3
        collected = pool.collect()
        assert [w.key for w in collected] == [5, -1, 7]
        assert [w.value for w in collected] == ["file 5", None, "file 7"]
        assert isinstance(collected[1].error, OSError)
        assert pool.pending == 0 and pool.abandon() == []
        assert (pool.times.items, pool.times.workers) == (3, 0) and pool.times.held_s < 0.1
    finally:
        pool.close()
