"""The one atomic file writer and the one file hash; everything sda writes goes through here.

`write_atomic` writes into a hidden temporary file in the target's folder (`.NAME.PID.RANDOM.tmp`,
matched by TEMP_GLOB), flushes and fsyncs it, moves it into place with `os.replace` and fsyncs the
folder, so a reader (or a crash) sees the old file or the new one, never part of one. Any failure
is one line (OutputError) and leaves no temporary file behind. A file that exists is never
replaced unless the caller asks (`replace=True`: files rewritten on purpose, such as a report or a
training state); the check is made again just before the move.

Content is bytes, or a function that writes into the open binary file. The second is for
`torch.save`: a checkpoint streams straight into the temporary file, with no second copy of it
in memory, and an error inside the function (an object torch cannot save) is raised as it is,
after the temporary file is removed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from sda.errors import OutputError

# The writer's temporary files: hidden (dataset loaders and output globs skip them), in the
# target's folder (os.replace is atomic only within one file system), removable when stale.
TEMP_GLOB = ".*.tmp"

Writer = Callable[[BinaryIO], None]


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks. Raises OSError when it cannot be read."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_json_atomic(path: Path | str, data: Any, *, replace: bool = False) -> Path:
    """`data` as indented JSON through `write_atomic`. NaN or infinity raise ValueError (JSON
    cannot hold them): the file stays valid JSON."""
    text = json.dumps(data, indent=2, allow_nan=False, default=str)
    return write_atomic(path, (text + "\n").encode(), replace=replace)


def temporary_path(path: Path) -> Path:
    """A fresh temporary name beside `path`; unique across processes and threads."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def write_atomic(path: Path | str, content: bytes | Writer, *, replace: bool = False) -> Path:
    """Write `content` to `path` atomically (see the module docstring) and return `path`.

    Raises OutputError (one line) when `path` exists and `replace` is False, or when anything
    fails on the way (folder missing or not writable, disk full); nothing is left behind."""
    path = Path(path)
    _refuse_existing(path, replace)
    temporary = temporary_path(path)
    try:
        try:
            # Like open(..., "wb"): permissions follow the umask; O_EXCL never reuses a file.
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(descriptor, "wb") as handle:
                if callable(content):
                    content(handle)
                else:
                    handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            _refuse_existing(path, replace)
            os.replace(temporary, path)
        except OSError as error:
            raise OutputError(_describe(error, path)) from None
        _fsync_folder(path.parent)
    finally:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass  # the folder itself is gone or unwritable: there is nothing of ours in it
    return path


def _refuse_existing(path: Path, replace: bool) -> None:
    if not replace and path.exists():
        raise OutputError(f"{path} already exists; sda never overwrites outputs")


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable. Best effort: some file systems cannot fsync a folder, and the
    rename is atomic without it."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _describe(error: OSError, path: Path) -> str:
    folder = path.parent
    if error.errno == errno.ENOSPC:
        try:
            free = shutil.disk_usage(folder).free / 1e6
            return f"disk full while writing {path.name}: {free:.0f} MB free in {folder}"
        except OSError:
            return f"disk full while writing {path.name} in {folder}"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write into {folder}: {error.strerror}"
    if error.errno == errno.ENOENT and not folder.is_dir():
        return f"cannot write {path.name}: folder {folder} does not exist"
    return f"cannot write {path}: {error.strerror or error}"
