"""Ending on SIGINT (Ctrl-C) or SIGTERM (Slurm, systemd, `kill`): abandon, record, exit.

While `handling_signals()` is active, the first SIGINT or SIGTERM raises `Interrupted` where the
process is: an item being rendered is abandoned, not waited for (systemd waits 90 s and Slurm 30 s
before SIGKILL). Inside a `deferred()` block (an output being written, a record being saved) the
signal is held until the block ends, so a write is finished, never left half-done. Whoever
catches `Interrupted` records what was done (the job's outcome.json, the run's summary.json) and
ends with exit status 128 + the signal's number: 130 for SIGINT, 143 for SIGTERM.

In the launching process a second signal ends it at once: one line on stderr, no traceback,
nothing more written (every file sda writes is atomic, so nothing is left half-written either;
resume= continues). A launcher's worker process ignores further signals instead: its supervisor
forwards the signal again as it stops (submitit's local controller does, within milliseconds),
and escalates to SIGKILL itself when it will not wait.

`Interrupted` is a BaseException, not an Exception: Hydra catches a job's Exception and goes on
with the next job, and a job's own `except Exception` would take it for a failure.

Signal handlers run in the main thread only: a write on another thread is not a `deferred()`
block by itself, and must be waited for before a job records its outcome.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; `signum` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        return exit_status(self.signum)

    def __str__(self) -> str:
        return f"interrupted by {self.signal_name}"


def exit_status(signum: int) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number (130, 143)."""
    return 128 + int(signum)


def signal_number(name: str) -> int:
    """`SIGINT` -> 2."""
    return int(signal.Signals[name])


@dataclass
class _State:
    active: bool = False  # handlers installed by handling_signals()
    second_ends_at_once: bool = True  # else a further signal is ignored
    received: int | None = None  # the first signal's number
    raised: bool = False  # Interrupted was raised for it (a further signal is the second)
    deferring: int = 0  # depth of deferred() blocks


_state = _State()


def _handle(signum: int, frame: object) -> None:
    if _state.received is not None:
        if _state.second_ends_at_once:
            _end_at_once(signum)
        return
    _state.received = signum
    if _state.deferring:
        return  # deferred() raises it when its block ends
    _state.raised = True
    raise Interrupted(signum)


def _end_at_once(signum: int) -> None:
    line = f"sda: second {signal.Signals(signum).name}: stopped at once; resume= continues the run\n"
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, RuntimeError):  # RuntimeError: a reentrant flush
            stream.flush()
    with contextlib.suppress(OSError):
        os.write(2, line.encode())
    os._exit(exit_status(signum))


def active() -> bool:
    """Whether `handling_signals()` is active in this process."""
    return _state.active


def received() -> int | None:
    """The signal received while `handling_signals()` was active, if any."""
    return _state.received


@contextlib.contextmanager
def handling_signals(second_ends_at_once: bool = True) -> Iterator[None]:
    """Turn SIGINT and SIGTERM into `Interrupted` for the block; the previous handlers come back
    after it. A second signal ends the process at once, or is ignored (`second_ends_at_once`
    False: a worker process, see the module docstring). Only in the main thread (where Python
    runs signal handlers)."""
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    saved = _state.__dict__.copy()
    _state.__dict__.update(_State(active=True, second_ends_at_once=second_ends_at_once).__dict__)
    for signum in SIGNALS:
        signal.signal(signum, _handle)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _state.__dict__.update(saved)


@contextlib.contextmanager
def deferred(raise_at_end: bool = True) -> Iterator[None]:
    """A block a first signal does not abandon: it runs to its end, then `Interrupted` is raised
    (unless `raise_at_end` is False: the block itself is how the process ends). A second signal
    still ends the process at once."""
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1
    if raise_at_end and not _state.deferring and _state.received is not None and not _state.raised:
        _state.raised = True
        raise Interrupted(_state.received)
