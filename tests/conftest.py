"""Shared fixtures: one torch thread for modules that render, and a tiny synthesised dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import make_tiny_dataset


@pytest.fixture(scope="module")
def one_thread():
    """Use with `pytestmark = pytest.mark.usefixtures("one_thread")` in a module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny_dataset"))
