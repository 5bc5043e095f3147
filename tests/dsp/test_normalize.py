import math

import pytest
import torch

from sda.dsp.normalize import amplitude_to_dbfs, dbfs_to_amplitude, enforce_ceiling, peak_normalize
from sda.dsp.resample import resample

SAMPLE_RATE = 48000


def peak_dbfs(audio: torch.Tensor) -> torch.Tensor:
    return amplitude_to_dbfs(audio.abs().amax(dim=(-2, -1)).double())


def square_wave(freq_hz: float, samples: int) -> torch.Tensor:
    t = torch.arange(samples, dtype=torch.float64) / SAMPLE_RATE
    return torch.sign(torch.sin(2 * math.pi * freq_hz * t + 0.1)).float()


def test_dbfs_conversions_round_trip_and_map_zero_to_minus_infinity():
    assert amplitude_to_dbfs(1.0) == 0.0
    assert amplitude_to_dbfs(0.5) == pytest.approx(-6.0206, abs=1e-4)
    assert amplitude_to_dbfs(-0.5) == pytest.approx(-6.0206, abs=1e-4)
    assert amplitude_to_dbfs(0.0) == -math.inf
    assert dbfs_to_amplitude(-math.inf) == 0.0
    assert dbfs_to_amplitude(amplitude_to_dbfs(0.3)) == pytest.approx(0.3, rel=1e-12)
    levels = torch.tensor([0.0, 0.001, 1.0])
    assert torch.equal(amplitude_to_dbfs(levels), torch.tensor([-math.inf, -60.0, 0.0]))
    torch.testing.assert_close(dbfs_to_amplitude(torch.tensor([-math.inf, -60.0, 0.0])), levels)


def test_peak_normalize_puts_every_item_peak_at_minus_1_dbfs():
    gen = torch.Generator().manual_seed(0)
    levels = torch.tensor([1e-4, 0.03, 0.7, 5.0])
    audio = torch.randn(4, 2, 4800, generator=gen) * levels[:, None, None]
    out, gains = peak_normalize(audio, target_dbfs=-1.0)
    assert gains.shape == (4,)
    torch.testing.assert_close(peak_dbfs(out), torch.full((4,), -1.0, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(out, audio * gains[:, None, None])


def test_peak_normalize_uses_one_gain_per_item_so_stereo_balance_is_kept():
    gen = torch.Generator().manual_seed(1)
    left = torch.randn(1, 1, 4800, generator=gen)
    audio = torch.cat([left * 0.2, left * 0.05], dim=1)  # right is 12 dB below left
    out, _ = peak_normalize(audio)
    balance_db = 20 * math.log10(out[0, 0].abs().max().item() / out[0, 1].abs().max().item())
    assert balance_db == pytest.approx(20 * math.log10(4), abs=1e-4)


def test_peak_normalize_leaves_silent_and_non_finite_items_unchanged_with_gain_1():
    audio = torch.stack([torch.zeros(2, 100), torch.full((2, 100), 0.5), torch.full((2, 100), math.nan)])
    out, gains = peak_normalize(audio)
    assert torch.equal(out[0], torch.zeros(2, 100))
    assert gains[0].item() == 1.0 and gains[2].item() == 1.0
    assert out[1].abs().max().item() == pytest.approx(dbfs_to_amplitude(-1.0), rel=1e-6)


@pytest.mark.parametrize("level", [0.5, math.inf, math.nan])
def test_levels_above_0_dbfs_or_not_finite_raise(level):
    with pytest.raises(ValueError, match="dBFS"):
        peak_normalize(torch.ones(1, 1, 10), level)
    with pytest.raises(ValueError, match="dBFS"):
        enforce_ceiling(torch.ones(1, 1, 10), level)


def test_resampling_a_normalized_square_wave_overshoots_and_enforce_ceiling_brings_it_back():
    loud, _ = peak_normalize(square_wave(1000.0, 48000)[None, None], -1.0)
    quiet = loud * dbfs_to_amplitude(-20.0)
    resampled = resample(torch.cat([loud, quiet]), SAMPLE_RATE, 44100)
    before = peak_dbfs(resampled)
    assert before[0].item() > -0.5  # Gibbs overshoot of the band-limited edges
    out, gains = enforce_ceiling(resampled, ceiling_dbfs=-1.0)
    ceiling = torch.tensor(dbfs_to_amplitude(-1.0), dtype=torch.float32)
    assert out[0].abs().max() <= ceiling
    assert peak_dbfs(out)[0].item() == pytest.approx(-1.0, abs=1e-4)
    # The quiet item overshoots too, but stays under the ceiling: untouched.
    assert gains[1].item() == 1.0 and torch.equal(out[1], resampled[1])


def test_enforce_ceiling_never_boosts():
    audio = torch.full((3, 1, 10), 0.01)
    out, gains = enforce_ceiling(audio, ceiling_dbfs=-1.0)
    assert torch.equal(gains, torch.ones(3)) and torch.equal(out, audio)


def test_enforce_ceiling_result_never_exceeds_ceiling_for_many_peaks():
    peaks = torch.linspace(0.9, 3.0, 1001)
    audio = peaks[:, None, None] * torch.tensor([1.0, -0.5])[None, :, None]
    out, _ = enforce_ceiling(audio, ceiling_dbfs=-1.0)
    ceiling = torch.tensor(dbfs_to_amplitude(-1.0), dtype=torch.float32)
    assert (out.abs().amax(dim=(-2, -1)) <= ceiling).all()
    assert (peak_dbfs(out) > -1.0 - 1e-5).all()
