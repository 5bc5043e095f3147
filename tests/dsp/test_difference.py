"""The difference measure of two renders: peak difference in dBFS, log-spectral distance in dB."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sda.dsp.difference import LSD_FLOOR_DB, log_spectral_distance_db, peak_difference_dbfs

SR = 48000


def noise(samples: int = SR, seed: int = 0, channels: int = 1) -> torch.Tensor:
    return 0.25 * torch.randn(channels, samples, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_identical_renders_differ_by_minus_infinity_dbfs_and_zero_db():
    a = noise(channels=2).float()
    assert peak_difference_dbfs(a, a.clone()) == -math.inf
    assert log_spectral_distance_db(a, a.clone()) == 0.0


def test_peak_difference_is_the_largest_sample_difference_in_dbfs():
    a = noise()
    b = a.clone()
    b[0, 1000] += 1e-3  # one sample off by -60 dBFS
    b[0, 2000] -= 1e-4  # a smaller one elsewhere does not count
    assert peak_difference_dbfs(a, b) == pytest.approx(-60.0, abs=1e-6)
    assert peak_difference_dbfs(b, a) == peak_difference_dbfs(a, b)
    # float32 audio one rounding step apart at full scale: 2^-24, about -144.5 dBFS
    one = torch.ones(1, 10)
    assert peak_difference_dbfs(one, one - 2.0**-24) == pytest.approx(20 * math.log10(2.0**-24))


@pytest.mark.parametrize("gain", [0.5, 2.0, 10 ** (0.1 / 20)])
def test_log_spectral_distance_of_a_gain_change_is_the_gain_in_db(gain):
    # Every bin's power changes by gain^2, so every frame's RMS level ratio is |20 log10 gain|.
    a = noise(channels=2)
    assert log_spectral_distance_db(a, gain * a) == pytest.approx(abs(20 * math.log10(gain)), rel=1e-9)
    assert log_spectral_distance_db(gain * a, a) == pytest.approx(log_spectral_distance_db(a, gain * a))


def test_log_spectral_distance_ignores_phase_but_hears_a_different_spectrum():
    # A sign flip changes every sample and no spectrum; a half-band low-pass removes half the bins.
    a = noise()
    assert log_spectral_distance_db(a, -a) == pytest.approx(0.0, abs=1e-9)
    spectrum = torch.fft.rfft(a)
    spectrum[..., spectrum.shape[-1] // 2 :] = 0
    lowpassed = torch.fft.irfft(spectrum, n=a.shape[-1])
    assert log_spectral_distance_db(a, lowpassed) > 20.0


def test_tiny_added_noise_reads_as_a_tiny_distance_and_silence_as_the_floor():
    a = noise()
    b = a + 1e-6 * noise(seed=1)  # -136 dB under the signal
    assert log_spectral_distance_db(a, b) < 1e-3
    # Against silence every bin sits at the floor, 120 dB under the louder render's loudest bin
    # (white noise's bins sit a few dB under its loudest, so the distance is a little less).
    assert abs(LSD_FLOOR_DB) - 20 < log_spectral_distance_db(a, torch.zeros_like(a)) <= abs(LSD_FLOOR_DB)
    assert log_spectral_distance_db(torch.zeros(1, 5000), torch.zeros(1, 5000)) == 0.0


def test_inputs_of_any_leading_shape_and_type_and_short_signals_are_measured():
    a = np.random.default_rng(0).standard_normal((2, 2, 1500)).astype(np.float32)
    assert log_spectral_distance_db(torch.from_numpy(a), torch.from_numpy(2 * a)) == pytest.approx(
        20 * math.log10(2), rel=1e-9
    )
    with pytest.raises(ValueError, match="same shape"):
        peak_difference_dbfs(torch.zeros(1, 10), torch.zeros(2, 10))
    with pytest.raises(ValueError, match="empty"):
        log_spectral_distance_db(torch.zeros(1, 0), torch.zeros(1, 0))
