"""Loudness and true peak (sda.dsp.loudness): checked against analytic values and torchaudio's own
BS.1770 loudness and resampler, and normalization that reaches its target or stops at the ceiling."""

import math

import pytest
import torch
import torchaudio

from sda.dsp.filters import anti_alias
from sda.dsp.loudness import TRUE_PEAK_OVERSAMPLING, Levels, loudness_lufs, normalize_loudness, true_peak

RATE = 48000


def tone(freq_hz: float, seconds: float, amplitude: float = 0.5, phase: float = 0.3, rate: int = RATE) -> torch.Tensor:
    t = torch.arange(round(seconds * rate), dtype=torch.float64) / rate
    return (amplitude * torch.sin(2 * math.pi * freq_hz * t + phase)).float()[None]


def faded(audio: torch.Tensor, fade: int = 2000) -> torch.Tensor:
    """Raised-cosine ends, so a tone's abrupt start and end add no ringing of their own."""
    n = audio.shape[-1]
    ramp = torch.sin(math.pi / 2 * torch.clamp(torch.minimum(torch.arange(n), n - 1 - torch.arange(n)) / fade, max=1))
    return audio * ramp.float() ** 2


def hit(seconds: float, decay_s: float, seed: int, channels: int = 1) -> torch.Tensor:
    """A noise burst low-passed at 20 kHz (as every output is), with an instant attack."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(round(seconds * RATE)) / RATE
    burst = anti_alias(torch.randn(channels, t.numel(), generator=g, dtype=torch.float64), RATE).float()
    return 0.2 * burst * torch.exp(-t / decay_s)


def dbtp(amplitude: float) -> float:
    return 20 * math.log10(amplitude)


def test_a_quarter_rate_sine_sampled_off_its_crests_reads_its_true_peak():
    n = torch.arange(RATE, dtype=torch.float64)
    sine = faded(torch.sin(math.pi / 2 * n + math.pi / 4)[None].float())  # samples at +-0.707
    assert dbtp(float(sine.abs().max())) == pytest.approx(-3.01, abs=0.01)
    assert dbtp(true_peak(sine)) == pytest.approx(0.0, abs=0.01)


@pytest.mark.parametrize("rate", [44100, 48000, 96000])
@pytest.mark.parametrize("freq_hz", [100.0, 3000.0, 11025.0, 19000.0])
def test_true_peak_of_a_sine_is_its_amplitude_as_far_as_4x_oversampling_can_see(rate, freq_hz):
    # Four points per sample period can miss a crest by up to an eighth of a period: the reading
    # lies between A * cos(pi * f / (4 * rate)) and A (BS.1770's 4x true peak under-reads so too).
    sine = faded(tone(freq_hz, 0.5, amplitude=0.8, rate=rate))
    lowest = dbtp(0.8 * math.cos(math.pi * freq_hz / (TRUE_PEAK_OVERSAMPLING * rate)))
    assert lowest - 0.005 <= dbtp(true_peak(sine)) <= dbtp(0.8) + 0.005


def test_true_peak_agrees_with_torchaudios_long_sinc_resampler_on_hits():
    # An independent 4x oversampler (Kaiser sinc, 64 zero crossings): the same peaks within 0.02 dB.
    upsample = torchaudio.transforms.Resample(
        RATE, 4 * RATE, lowpass_filter_width=64, rolloff=0.99, dtype=torch.float64
    )
    for seed in range(5):
        audio = hit(0.3, 0.02 + 0.02 * seed, seed, channels=2)
        padded = torch.nn.functional.pad(audio.double(), (256, 256))  # silence either side, as in a file
        reference = float(upsample(padded).abs().max())
        assert dbtp(true_peak(audio)) == pytest.approx(dbtp(reference), abs=0.02)
        assert true_peak(audio) >= float(audio.abs().max())


def test_integrated_loudness_agrees_with_torchaudios_bs1770():
    for seed in range(3):
        audio = hit(1.5, 0.4, seed, channels=2)  # quiet enough for torchaudio's filter clamp
        assert loudness_lufs(audio, RATE) == pytest.approx(float(torchaudio.functional.loudness(audio, RATE)), abs=0.05)


def test_a_hit_shorter_than_a_gating_block_is_measured_in_the_400_ms_block_that_holds_it():
    audio = hit(0.08, 0.02, 0)
    padded = torch.nn.functional.pad(audio, (0, round(0.4 * RATE) - audio.shape[-1]))
    assert loudness_lufs(audio, RATE) == pytest.approx(float(torchaudio.functional.loudness(padded, RATE)), abs=0.05)
    assert loudness_lufs(torch.zeros(1, 1000), RATE) is None


def test_normalization_reaches_a_reachable_target_exactly():
    audio = faded(tone(440.0, 2.0, amplitude=0.05))  # about -32 LUFS, peak -26 dBFS
    out, done = normalize_loudness(audio, RATE, -20.0, -1.0)
    assert loudness_lufs(out, RATE) == pytest.approx(-20.0, abs=0.01)
    assert done.shortfall_lu == 0.0 and not done.limited_by_true_peak
    assert done.levels.integrated_lufs == pytest.approx(-20.0, abs=1e-6)
    assert done.levels.true_peak_dbtp == pytest.approx(dbtp(true_peak(out)), abs=1e-4)


def test_an_unreachable_target_stops_at_the_true_peak_ceiling_and_says_by_how_much():
    audio = hit(0.3, 0.01, 1)  # a click: high crest factor
    before = Levels.of(audio, RATE)
    out, done = normalize_loudness(audio, RATE, -6.0, -1.0)
    assert dbtp(true_peak(out)) <= -1.0
    assert dbtp(true_peak(out)) == pytest.approx(-1.0, abs=0.001)
    reached = loudness_lufs(out, RATE)
    assert done.limited_by_true_peak
    assert done.shortfall_lu == pytest.approx(-6.0 - reached, abs=0.01)
    assert reached - before.integrated_lufs == pytest.approx(done.gain_db, abs=0.01)


def test_silence_is_left_alone():
    silence = torch.zeros(2, 4800)
    out, done = normalize_loudness(silence, RATE, -23.0, -1.0)
    assert torch.equal(out, silence) and done.shortfall_lu is None and done.gain_db == 0.0
