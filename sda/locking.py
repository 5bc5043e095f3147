"""One writer per output folder.

The process that launches a run or sweep locks its folder before Hydra writes anything into it,
and each job locks its own folder. Two processes resuming the same folder at once (a scheduled
retry while the night's run still goes on) would both make the missing outputs; the second is
refused instead, in one line, having written nothing. A folder inside a locked folder (a job of a
live sweep) and a folder around locked ones (a sweep over a job someone is running) are refused
too. Locks are advisory `flock`s on `.sda.lock`, released by the kernel when a process dies, so a
killed run never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None  # type: ignore[assignment]

from sda.errors import OutputError
from sda.outputs import LOCK_FILE

# Folders this process holds locks on: a job run in the launching process (Hydra's basic
# launcher) is inside its launcher's lock, and flock refuses a second lock from the same process.
_held: set[Path] = set()
# The same list for the launcher's workers (joblib, submitit): a job in a worker process locks
# its own folder inside the sweep folder its launcher holds, which is no conflict.
FAMILY_ENV = "SDA_LOCKED_FOLDERS"


def _family() -> set[Path]:
    return {Path(p) for p in os.environ.get(FAMILY_ENV, "").split(os.pathsep) if p}


def _set_family(folders: set[Path]) -> None:
    os.environ[FAMILY_ENV] = os.pathsep.join(sorted(str(f) for f in folders))


def _key(folder: Path) -> Path:
    return Path(os.path.abspath(folder))


def holds(folder: Path) -> bool:
    """Whether this process already holds the lock on `folder`."""
    return _key(folder) in _held


def _holder(handle: object) -> str:
    handle.seek(0)  # type: ignore[attr-defined]
    return handle.read().strip() or "?"  # type: ignore[attr-defined]


def _probe(lock_path: Path, folder: Path) -> None:
    """Raise if another process holds `lock_path` (an existing lock file near `folder`)."""
    try:
        handle = open(lock_path)
    except OSError:
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(_refusal(_holder(handle), lock_path.parent, folder)) from None
        fcntl.flock(handle, fcntl.LOCK_UN)


def _refusal(pid: str, locked: Path, folder: Path) -> str:
    where = "" if locked == folder else (", which holds it" if locked in folder.parents else f", inside {folder}")
    return f"another sda process (pid {pid}) is writing into {locked}{where}; let it finish or stop it first"


def check_neighbours(folder: Path) -> None:
    """Refuse a folder whose enclosing folders, or whose folders one level down, another process
    has locked. Writes nothing."""
    if fcntl is None:
        return
    folder = _key(folder)
    ours = _held | _family()
    for parent in folder.parents:
        if parent in ours:
            break
        _probe(parent / LOCK_FILE, folder)
    if folder.is_dir():
        for child in folder.glob(f"*/{LOCK_FILE}"):
            if child.parent not in _held:
                _probe(child, folder)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold the exclusive lock on `folder` (made if missing; pass a folder that pre-flight has
    checked) until the block ends. Raises a one-line OutputError if another process holds it or
    a neighbouring lock (see `check_neighbours`); a folder this process already holds is fine."""
    key = _key(folder)
    if key in _held or fcntl is None:
        yield
        return
    check_neighbours(key)
    try:
        key.mkdir(parents=True, exist_ok=True)
        handle = open(key / LOCK_FILE, "a+")
    except OSError as error:
        raise OutputError(f"cannot write into {folder}: {error.strerror or error}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(_refusal(_holder(handle), key, key)) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        _held.add(key)
        _set_family(_family() | {key})
        try:
            yield
        finally:
            _held.discard(key)
            _set_family(_family() - {key})
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_unlocked(folder: Path) -> None:
    """Pre-flight: refuse `folder` if another process holds it or a neighbouring lock; creates
    nothing (a refused process must leave the other process's folder alone)."""
    if fcntl is None:
        return
    key = _key(folder)
    if key in _held:
        return
    check_neighbours(key)
    _probe(key / LOCK_FILE, key)
