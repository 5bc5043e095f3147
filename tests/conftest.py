"""Shared fixtures: one torch thread for modules that render, a tiny synthesized dataset, and a
cache folder of the session's own (runs record their throughput there, never in the user's)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from sda.estimate import CACHE_ENV
from sda.model import LoadedModel, load_model
from tests.helpers import make_tiny_dataset

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Run by pytest-xdist, one worker per core: one torch thread each, and for every command a
    # test starts, so workers do not fight over the cores (no render's bytes depend on it).
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def own_cache_folder(tmp_path_factory):
    """SDA_CACHE_DIR for this process and every command the tests start."""
    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("cache"))
    yield
    if before is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = before


@pytest.fixture(scope="module")
def one_thread():
    """Use with `pytestmark = pytest.mark.usefixtures("one_thread")` in a module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shipped() -> LoadedModel:
    """The shipped default model on the CPU, loaded once for the session (read-only)."""
    return load_model("default", "cpu")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny_dataset"))
