import math

import pytest
import torch

from sda.dsp.resample import _cached_resampler, get_resampler, resample


def sine(freq_hz: float, sample_rate: int, samples: int) -> torch.Tensor:
    t = torch.arange(samples, dtype=torch.float64) / sample_rate
    return torch.sin(2 * math.pi * freq_hz * t).float()


def tone_amplitude(x: torch.Tensor, freq_hz: float, sample_rate: int) -> tuple[float, float]:
    """(amplitude, frequency of the strongest bin) over a whole number of 10 Hz periods mid-signal,
    so a tone on a multiple of 10 Hz falls exactly on one bin."""
    segment = sample_rate // 10 * 4
    start = (x.shape[-1] - segment) // 2
    spectrum = torch.fft.rfft(x[..., start : start + segment].double()).abs() * 2 / segment
    peak_bin = spectrum.argmax().item()
    return spectrum[round(freq_hz * segment / sample_rate)].item(), peak_bin * sample_rate / segment


def test_resampler_is_built_once_per_rate_pair_and_reused():
    first = get_resampler(48000, 44100, "cpu", torch.float32)
    hits = _cached_resampler.cache_info().hits
    resample(torch.zeros(2, 960), 48000, 44100)
    assert _cached_resampler.cache_info().hits == hits + 1, "resample() uses the resampler already built"
    assert get_resampler(48000, 44100, "cpu", torch.float32) is first
    # however the arguments are spelled, one rate pair on one device is one resampler
    assert get_resampler(48000, 44100) is first
    assert get_resampler(48000.0, 44100, torch.device("cpu")) is first
    assert get_resampler(48000, 96000, "cpu", torch.float32) is not first


def test_equal_rates_return_the_input_itself():
    x = torch.zeros(1, 10)
    assert resample(x, 48000, 48000) is x


@pytest.mark.parametrize("orig, new", [(48000, 44100), (44100, 48000), (48000, 96000), (96000, 44100)])
@pytest.mark.parametrize("samples", [48000, 12345, 1])
def test_output_length_is_ceil_of_samples_times_rate_ratio(orig, new, samples):
    out = resample(torch.zeros(2, samples), orig, new)
    assert out.shape == (2, math.ceil(samples * new / orig))


@pytest.mark.parametrize("new_rate", [44100, 96000])
def test_1khz_sine_keeps_frequency_and_amplitude_within_0_05_db(new_rate):
    out = resample(sine(1000.0, 48000, 48000)[None], 48000, new_rate)[0]
    amplitude, peak_hz = tone_amplitude(out, 1000.0, new_rate)
    assert peak_hz == 1000.0
    assert abs(20 * math.log10(amplitude)) < 0.05


def test_23khz_tone_resampled_to_44_1khz_is_at_least_60_db_down():
    # Above the new Nyquist (22.05 kHz): anything left would alias to 21.1 kHz.
    x = sine(23000.0, 48000, 48000)[None]
    out = resample(x, 48000, 44100)[0]
    middle = out[4410:-4410]
    level_db = 10 * math.log10(middle.double().pow(2).mean().item() / 0.5)
    assert level_db < -60.0


def test_resampling_batches_keep_leading_dims_and_dtype():
    x = torch.randn(3, 2, 4800, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = resample(x, 48000, 44100)
    assert out.shape == (3, 2, 4410) and out.dtype == torch.float64
    torch.testing.assert_close(out[1, 1], resample(x[1, 1], 48000, 44100))
