"""Test helpers: running sda's commands for real, composing configs, synthesising audio files.

Imported by test modules as `from tests.helpers import ...`; fixtures live in conftest.py.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parent.parent
SR = 48000


# One torch thread in the tests that render audio, and in the commands they run: on a shared
# two-core machine, two spinning OpenMP threads per process make phase reconstruction ten to a
# hundred times slower, and the audio's last bits depend on the thread count (references made
# in the test process must match the commands' files).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def sda_run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m sda.run args...` in `cwd` on one thread."""
    return run_sda("run", *args, cwd=cwd, env=ONE_THREAD)


def compose_run(*overrides: str):
    """A validated RunConfig composed from conf/ with Hydra's compose API."""
    from sda.cli import compose_config
    from sda.config import RunConfig, to_run_config

    return to_run_config(compose_config("config", list(overrides), RunConfig))


def run_sda(
    module: str, *args: str, cwd: Path, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m sda.<module> args...` in `cwd` and capture its output."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", f"sda.{module}", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
    )


def tone_file(
    path: Path,
    seconds: float,
    freq: float,
    sample_rate: int = SR,
    channels: int = 1,
    level_db: float = -6.0,
    seed: int = 0,
) -> Path:
    """A decaying harmonic tone with a little noise, written with soundfile."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = sum(np.sin(2 * math.pi * freq * k * t + rng.uniform(0, 6.28)) / k for k in range(1, 5))
    tone = tone * np.exp(-t * rng.uniform(0.3, 1.5)) + 0.02 * rng.standard_normal(t.size)
    tone *= 10 ** (level_db / 20) / np.abs(tone).max()
    data = np.stack([tone * (0.8 + 0.2 * c) for c in range(channels)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data.astype(np.float32), sample_rate, subtype="PCM_24")
    return path


def make_tiny_dataset(folder: Path, files: int = 6, seconds: float = 2.0) -> Path:
    """`files` short tones of different pitches, rates and channel counts (a CI-sized dataset)."""
    rates = [48000, 44100, 96000]
    for i in range(files):
        tone_file(folder / f"tone_{i}.wav", seconds, 110.0 * (1.5**i), rates[i % 3], channels=1 + (i % 2), seed=i)
    return folder


TINY_MODEL = [
    "latent_dim=8",
    "channels=[4,8,8]",
    "batch_size=8",
    "checkpoint_every=2",
    "kl_warmup_epochs=2",
    "patience=50",
]


def assert_batch_consistency(
    fn: Callable[[Any], Sequence[Any]],
    items: Any,
    *,
    batch_output: Sequence[Any] | None = None,
    indices: Iterable[int] | None = None,
    atol: float = 0.0,
    rtol: float = 0.0,
) -> Sequence[Any]:
    """`fn` run on a batch gives each item what it gives that item alone, in the manner of
    torchaudio's `assert_batch_consistency`.

    `fn(items)` returns one output per item, indexed like `items` (a tensor's rows or a list), an
    output being a tensor, an array, a number or a dict or list of them. For each index (all by
    default), `fn(items[i : i + 1])[0]` must equal `batch_output[i]` within atol + rtol * |alone|,
    exactly by default. `batch_output` is `fn(items)` unless given (a batch made once and shared
    by several tests). Returns the batch output."""
    if batch_output is None:
        batch_output = fn(items)
    for i in range(len(items)) if indices is None else indices:
        alone = fn(items[i : i + 1])
        assert len(alone) == 1, f"fn gave {len(alone)} outputs for one item"
        _assert_same(alone[0], batch_output[i], atol, rtol, f"item {i}")
    return batch_output


def _assert_same(alone: Any, batched: Any, atol: float, rtol: float, where: str) -> None:
    if isinstance(alone, dict):
        assert alone.keys() == batched.keys(), f"{where}: keys differ"
        for key in alone:
            _assert_same(alone[key], batched[key], atol, rtol, f"{where}[{key!r}]")
    elif alone is None or isinstance(alone, str | bool):
        assert alone == batched, f"{where} alone is {alone!r}, in the batch {batched!r}"
    else:
        torch.testing.assert_close(
            alone,
            batched,
            atol=atol,
            rtol=rtol,
            msg=lambda detail: f"{where} alone differs from {where} in the batch: {detail}",
        )


def has_cuda() -> bool:
    return torch.cuda.is_available()
