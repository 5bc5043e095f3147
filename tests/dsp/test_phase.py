"""Phase reconstruction: inverse mel, starting phases, Griffin-Lim."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys

import pytest
import torch

from sda.dsp.phase import griffin_lim, inverse_mel, locked_phase, spectral_convergence
from sda.dsp.spectrogram import SpectrogramSettings, mel_filterbank, mel_magnitude, stft
from tests.helpers import REPO, assert_batch_consistency

SETTINGS = SpectrogramSettings()
SR = SETTINGS.sample_rate


def harmonic_tone(seconds: float = 1.0, f0: float = 220.7, vibrato_hz: float = 0.0) -> torch.Tensor:
    t = torch.arange(int(seconds * SR)) / SR
    phase = f0 * t + (3.0 * torch.sin(2 * math.pi * vibrato_hz * t) if vibrato_hz else 0.0)
    return sum(0.2 / k * torch.sin(2 * math.pi * k * phase) for k in range(1, 8))


@pytest.mark.parametrize("method", ["pinv", "lstsq"])
def test_inverse_mel_recovers_a_smooth_spectrum_it_can_represent(method):
    # A linear magnitude that is itself a mel-band mixture is exactly representable.
    fb = mel_filterbank(SETTINGS)
    weights = torch.rand(SETTINGS.n_mels, 5, generator=torch.Generator().manual_seed(0))
    linear = fb @ weights
    mel = fb.T @ linear
    rebuilt = inverse_mel(mel, SETTINGS, method)
    assert rebuilt.shape == linear.shape
    assert rebuilt.min() >= 0
    assert torch.allclose(fb.T @ rebuilt, mel, rtol=1e-3, atol=1e-4)


def test_locked_start_puts_a_partials_bins_in_phase_where_independent_bins_drift():
    mag = stft(harmonic_tone(), SETTINGS).abs()
    zero_iterations = griffin_lim(mag, SETTINGS, SR, iterations=0, init="locked")
    random_start = griffin_lim(
        mag, SETTINGS, SR, iterations=0, init="random", generators=[torch.Generator().manual_seed(1)]
    )
    assert spectral_convergence(zero_iterations, mag, SETTINGS) < 0.1
    assert spectral_convergence(random_start, mag, SETTINGS) > 0.5


@pytest.mark.parametrize("vibrato_hz", [0.0, 5.0])
def test_locked_start_with_8_iterations_beats_random_start_with_32(vibrato_hz):
    mag = stft(harmonic_tone(vibrato_hz=vibrato_hz), SETTINGS).abs()
    locked = griffin_lim(mag, SETTINGS, SR, iterations=8, init="locked")
    random = griffin_lim(mag, SETTINGS, SR, iterations=32, init="random", generators=[torch.Generator().manual_seed(1)])
    assert spectral_convergence(locked, mag, SETTINGS) < spectral_convergence(random, mag, SETTINGS)


@pytest.mark.determinism
def test_griffin_lim_gives_each_item_the_same_audio_alone_or_in_a_batch():
    g = torch.Generator().manual_seed(3)
    mags = stft(0.3 * torch.randn(4, SR // 2, generator=g), SETTINGS).abs()
    assert_batch_consistency(lambda m: griffin_lim(m, SETTINGS, SR // 2, iterations=6, init="locked"), mags)


@pytest.mark.determinism
def test_random_start_depends_on_the_items_generator_not_the_batch():
    mags = stft(0.3 * torch.randn(2, SR // 4, generator=torch.Generator().manual_seed(0)), SETTINGS).abs()

    def reconstruct(indices: list[int]) -> torch.Tensor:
        generators = [torch.Generator().manual_seed(11 + i) for i in indices]
        return griffin_lim(mags[indices], SETTINGS, SR // 4, iterations=2, init="random", generators=generators)

    assert_batch_consistency(reconstruct, [0, 1])
    with pytest.raises(ValueError):
        griffin_lim(mags, SETTINGS, SR // 4, iterations=1, init="random", generators=[torch.Generator()])


def test_locked_phase_shape_and_range():
    mag = mel_magnitude(torch.randn(2, 3, SR // 4), SETTINGS)  # any non-negative array
    phase = locked_phase(mag, SETTINGS)
    assert phase.shape == mag.shape
    assert phase.min() >= 0 and phase.max() < 2 * math.pi + 1e-6


def test_locked_start_does_not_depend_on_its_block_size(monkeypatch):
    # Long spectrograms are integrated a block of frames at a time, carrying the last frame over.
    import sda.dsp.phase as phase

    settings = SpectrogramSettings()
    g = torch.Generator().manual_seed(2)
    magnitude = torch.rand(2, settings.n_freqs, 50, generator=g)
    whole = phase.locked_phase(magnitude, settings)
    monkeypatch.setattr(phase, "LOCKED_BLOCK_FRAMES", 7)
    assert torch.equal(phase.locked_phase(magnitude, settings), whole)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton (comes with torch's CUDA builds)")
def test_the_gpu_chain_kernel_gives_torchs_phases_to_the_bit(tmp_path):
    """The locked start's frame chain runs as one kernel on a GPU. Triton's interpreter runs it
    on the CPU here: its phases must be torch's exactly (tests/test_gpu.py checks the GPU)."""
    settings = SpectrogramSettings()
    magnitude = torch.rand(2, settings.n_freqs, 70, generator=torch.Generator().manual_seed(4)) ** 4
    torch.save(magnitude, tmp_path / "magnitude.pt")
    code = (
        "import sys, torch\n"
        "from sda.dsp import chain_kernel, phase\n"
        "from sda.dsp.spectrogram import SpectrogramSettings\n"
        "assert chain_kernel.kernel_available(torch.device('cpu'))\n"
        "phase.LOCKED_BLOCK_FRAMES = 32  # chains carried over blocks too\n"
        "m = torch.load(sys.argv[1])\n"
        "torch.save(phase.locked_phase(m, SpectrogramSettings()), sys.argv[2])\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "magnitude.pt"), str(tmp_path / "phase.pt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.equal(torch.load(tmp_path / "phase.pt"), locked_phase(magnitude, settings))
