"""Versions recorded in checkpoints and sidecars, so a result says what made it."""

from __future__ import annotations

import functools
import importlib.metadata
import platform

import numpy
import soundfile
import torch
import torchaudio


@functools.lru_cache(maxsize=1)
def sda_version() -> str:
    try:
        return importlib.metadata.version("sda")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def versions() -> dict[str, str]:
    return {
        "sda_version": sda_version(),
        "torch_version": torch.__version__,
        "torchaudio_version": torchaudio.__version__,
        "numpy_version": numpy.__version__,
        "soundfile_version": soundfile.__version__,
        "libsndfile_version": soundfile.__libsndfile_version__,
        "python_version": platform.python_version(),
    }
