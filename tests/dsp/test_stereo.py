import math

import pytest
import torch

from sda.dsp.stereo import haas_delay_samples, join_dual_seed, lr_correlation, mid_side_widen

SAMPLE_RATE = 48000


def noise(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_width_1_gives_input_on_left_and_input_delayed_by_rounded_haas_samples_on_right():
    x = noise(3, 1, 4800)
    haas_ms = 12.34
    delay = round(haas_ms * SAMPLE_RATE / 1000)
    assert delay == 592
    out = mid_side_widen(x, SAMPLE_RATE, width=1.0, haas_ms=haas_ms)
    assert out.shape == (3, 2, 4800)
    assert torch.equal(out[:, 0], x[:, 0])
    assert torch.equal(out[:, 1, delay:], x[:, 0, :-delay])
    assert torch.equal(out[:, 1, :delay], torch.zeros(3, delay))


def test_width_0_gives_identical_channels_holding_the_mid():
    x = noise(2, 1, 4800)
    out = mid_side_widen(x, SAMPLE_RATE, width=0.0)
    assert torch.equal(out[:, 0], out[:, 1])
    delay = haas_delay_samples(SAMPLE_RATE, 12.0)
    torch.testing.assert_close(out[:, 0, delay:], (x[:, 0, delay:] + x[:, 0, :-delay]) / 2)


def test_correlation_falls_as_width_grows_on_noise():
    x = noise(1, 1, 48000)
    widths = [0.0, 0.25, 0.5, 1.0, 1.5]
    correlations = [lr_correlation(mid_side_widen(x, SAMPLE_RATE, w)).item() for w in widths]
    assert correlations[0] == pytest.approx(1.0, abs=1e-6)
    assert all(a > b for a, b in zip(correlations, correlations[1:], strict=False))
    # Delayed white noise is uncorrelated with itself: width 1 is two independent channels.
    assert abs(correlations[3]) < 0.02
    # Beyond 1 the side dominates the mid and the channels anti-correlate: (1 - w^2) / (1 + w^2).
    assert correlations[4] == pytest.approx((1 - 1.5**2) / (1 + 1.5**2), abs=0.02)


@pytest.mark.parametrize("width", [-0.1, 1.51, math.nan])
def test_width_outside_0_to_1_5_raises(width):
    with pytest.raises(ValueError, match="width"):
        mid_side_widen(noise(1, 1, 100), SAMPLE_RATE, width)


def test_stereo_input_to_widen_raises():
    with pytest.raises(ValueError, match=r"\[batch, 1, samples\]"):
        mid_side_widen(noise(1, 2, 100), SAMPLE_RATE, 1.0)


def test_haas_delay_longer_than_signal_leaves_right_channel_silent():
    out = mid_side_widen(noise(1, 1, 100), SAMPLE_RATE, 1.0, haas_ms=10.0)
    assert out.shape == (1, 2, 100)
    assert torch.equal(out[:, 1], torch.zeros(1, 100))


def test_join_dual_seed_stacks_left_and_right():
    left, right = noise(2, 1, 50, seed=1), noise(2, 1, 50, seed=2)
    out = join_dual_seed(left, right)
    assert out.shape == (2, 2, 50)
    assert torch.equal(out[:, 0], left[:, 0]) and torch.equal(out[:, 1], right[:, 0])


def test_join_dual_seed_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes must match"):
        join_dual_seed(noise(2, 1, 50), noise(2, 1, 51))


def test_lr_correlation_is_1_for_identical_minus_1_for_inverted_0_for_silence():
    x = noise(1, 1000)
    stereo = torch.stack([torch.cat([x, x]), torch.cat([x, -0.5 * x]), torch.zeros(2, 1000)])
    torch.testing.assert_close(lr_correlation(stereo), torch.tensor([1.0, -1.0, 0.0]))


def test_lr_correlation_ignores_dc_offset():
    x = noise(1, 1000)
    assert lr_correlation(torch.cat([x + 0.3, x - 0.2])).item() == pytest.approx(1.0, abs=1e-6)
