"""The one atomic writer and the one file hash: never overwriting unless asked, and every failure
one line with nothing left behind (no temporary file, the old file whole)."""

from __future__ import annotations

import functools
import hashlib
import os
import signal

import pytest
import torch

try:
    import resource
except ImportError:  # not on Windows
    resource = None

from sda.errors import OutputError
from sda.files import file_sha256, write_atomic


def test_write_refuses_an_existing_file_and_leaves_it_and_no_temporary(tmp_path):
    target = tmp_path / "out.wav"
    target.write_bytes(b"precious")
    with pytest.raises(OutputError, match="already exists"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]


def test_replace_swaps_the_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "index.html"
    write_atomic(target, b"old page, longer than the new one")
    assert write_atomic(target, b"new page", replace=True) == target
    assert target.read_bytes() == b"new page"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html"]


def test_write_into_a_missing_folder_is_one_line_output_error_naming_it(tmp_path):
    with pytest.raises(OutputError) as caught:
        write_atomic(tmp_path / "missing" / "out.wav", b"data")
    message = str(caught.value)
    assert "\n" not in message and "missing" in message and "does not exist" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_write_into_a_read_only_folder_is_one_line_output_error(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError) as caught:
            write_atomic(folder / "out.wav", b"data")
    finally:
        folder.chmod(0o755)
    assert "\n" not in str(caught.value) and "cannot write into" in str(caught.value)
    assert list(folder.iterdir()) == []


@pytest.mark.skipif(resource is None, reason="needs POSIX file-size limits")
def test_a_replace_that_fails_part_way_keeps_the_old_file_whole_and_no_temporary(tmp_path):
    """A file-size limit stops the write half-way (EFBIG, as a full disk would): one line, the
    previous file untouched, no temporary file."""
    target = tmp_path / "manifest.csv"
    target.write_bytes(b"the previous report\n")
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, limits[1]))
    try:
        with pytest.raises(OutputError) as caught:
            write_atomic(target, b"x" * (64 * 1024), replace=True)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert "\n" not in str(caught.value) and "manifest.csv" in str(caught.value)
    assert target.read_bytes() == b"the previous report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.csv"]


def test_a_torch_checkpoint_streams_through_the_writer_and_loads_back(tmp_path):
    state = {"weights": torch.arange(6.0).reshape(2, 3), "epoch": 4}
    path = write_atomic(tmp_path / "state.pt", functools.partial(torch.save, state))
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["weights"], state["weights"]) and loaded["epoch"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


def test_an_error_inside_the_writer_function_is_raised_as_it_is_and_leaves_nothing(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"the good model")

    def fails_half_way(handle):
        handle.write(b"half a checkpoint")
        raise ValueError("cannot serialize this object")

    with pytest.raises(ValueError, match="cannot serialize"):  # the real error, not a file-system one
        write_atomic(target, fails_half_way, replace=True)
    assert target.read_bytes() == b"the good model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_file_sha256_is_the_sha256_of_the_bytes_across_read_blocks(tmp_path):
    data = bytes(range(256)) * (5 * 4096 + 3)  # about 5 MiB: several read blocks and a remainder
    (tmp_path / "big").write_bytes(data)
    (tmp_path / "empty").write_bytes(b"")
    assert file_sha256(tmp_path / "big") == hashlib.sha256(data).hexdigest()
    assert file_sha256(tmp_path / "empty") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
