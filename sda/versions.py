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
        # str(): torch.__version__ is a str subclass that weights-only loading refuses
        "torch_version": str(torch.__version__),
        "torchaudio_version": str(torchaudio.__version__),
        "numpy_version": str(numpy.__version__),
        "soundfile_version": str(soundfile.__version__),
        "libsndfile_version": str(soundfile.__libsndfile_version__),
        "python_version": platform.python_version(),
    }
