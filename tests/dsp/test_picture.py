"""The report's spectrogram levels computed with the batch (where a run's audio is) against the
report's own levels drawn from one signal: the same picture."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sda.dsp.picture import spectrogram_levels_batch
from sda.report.spectrogram import SPECTROGRAM_FLOOR_DB, SPECTROGRAM_PICTURE, spectrogram_levels_db


def signals(sample_rate: int, samples: int) -> torch.Tensor:
    """`[3, samples]`: a 1 kHz sine that stops halfway, noise with a fade-in, a chirp."""
    t = torch.arange(samples, dtype=torch.float64) / sample_rate
    g = torch.Generator().manual_seed(9)
    sine = torch.where(t < t[-1] / 2, 0.5 * torch.sin(2 * math.pi * 1000 * t), 0.0)
    noise = 0.1 * torch.randn(samples, generator=g, dtype=torch.float64) * torch.linspace(0, 1, samples)
    chirp = 0.3 * torch.sin(2 * math.pi * (50 + 2000 * t) * t)
    return torch.stack([sine, noise, chirp]).float()


@pytest.mark.parametrize("sample_rate, seconds", [(48000, 2.0), (44100, 0.03), (96000, 1.5), (48000, 31.0)], ids=str)
def test_batch_levels_are_the_reports_levels_within_float32_rounding(sample_rate, seconds):
    audio = signals(sample_rate, round(seconds * sample_rate))
    batch = spectrogram_levels_batch(audio, sample_rate, SPECTROGRAM_PICTURE).numpy()
    assert batch.shape == (3, SPECTROGRAM_PICTURE.height, SPECTROGRAM_PICTURE.width)
    drawn = round(SPECTROGRAM_PICTURE.max_s * sample_rate)  # what the report reads of a file
    for item, levels in zip(audio.numpy(), batch, strict=True):
        reference = spectrogram_levels_db(item[:drawn], sample_rate)
        shown = reference > SPECTROGRAM_FLOOR_DB  # below the floor a picture is black either way
        assert shown.mean() > 0.05  # the comparison covers part of the picture at least
        # float32 rounding shows 100 dB below the peak: still a tenth of one colour step (0.4 dB)
        assert np.abs(levels - reference)[shown].max() < 0.05


def test_an_items_levels_do_not_depend_on_its_batch():
    audio = signals(48000, 48000)
    batch = spectrogram_levels_batch(audio, 48000, SPECTROGRAM_PICTURE)
    for i in range(3):
        alone = spectrogram_levels_batch(audio[i : i + 1], 48000, SPECTROGRAM_PICTURE)[0]
        shown = alone > SPECTROGRAM_FLOOR_DB
        assert (batch[i] - alone)[shown].abs().max() < 1e-3
