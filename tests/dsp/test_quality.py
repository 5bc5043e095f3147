import json
import math

import pytest
import torch

from sda.dsp.quality import (
    CLIP_THRESHOLD,
    SNR_CAP_DB,
    QualityMetrics,
    longest_runs,
    measure_quality,
    measure_quality_batch,
)
from tests.helpers import assert_batch_consistency

SAMPLE_RATE = 48000


def sine(freq_hz: float, seconds: float, peak_dbfs: float = -1.0, dtype=torch.float32) -> torch.Tensor:
    t = torch.arange(round(seconds * SAMPLE_RATE), dtype=torch.float64) / SAMPLE_RATE
    return (10 ** (peak_dbfs / 20) * torch.sin(2 * math.pi * freq_hz * t)).to(dtype)


def with_gaps(x: torch.Tensor) -> torch.Tensor:
    """Silence every fourth 100 ms block: 25 % silent frames give the SNR estimate a true floor."""
    gate = (torch.arange(x.shape[-1]) // 4800) % 4 != 0
    return torch.where(gate, x, 0.0)


def noise(samples: int, rms_dbfs: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 10 ** (rms_dbfs / 20) * torch.randn(samples, generator=gen, dtype=torch.float64)


def test_minus_1_dbfs_sine_has_peak_minus_1_and_rms_minus_4_01_dbfs():
    m = measure_quality(sine(1000.0, 1.0)[None], SAMPLE_RATE)
    assert m.peak_dbfs == pytest.approx(-1.0, abs=1e-3)
    assert m.rms_dbfs == pytest.approx(-1.0 - 10 * math.log10(2), abs=1e-3)
    assert m.clipped_samples == 0 and m.finite and m.lr_correlation is None
    assert m.dc_offset < 1e-6 and m.silent_frame_fraction == 0.0


def test_snr_estimate_of_tone_bursts_over_noise_floor_is_within_1_db_and_tracks_the_floor():
    # 1 kHz tone at -20 dBFS present in alternate 200 ms blocks, white noise underneath throughout.
    samples = 4 * SAMPLE_RATE
    gate = (torch.arange(samples) // (SAMPLE_RATE // 5)) % 2 == 0
    tone = torch.where(gate, sine(1000.0, 4.0, -20.0, torch.float64), 0.0)
    for noise_dbfs in (-60.0, -40.0):
        audio = (tone + noise(samples, noise_dbfs)).float()[None]
        # Truth by the estimator's definition: mean power of everything over the noise power.
        true_db = 10 * math.log10((0.5 * 0.5 * 10 ** (-20 / 10) + 10 ** (noise_dbfs / 10)) / 10 ** (noise_dbfs / 10))
        assert measure_quality(audio, SAMPLE_RATE).snr_db == pytest.approx(true_db, abs=1.0)


def test_snr_of_a_signal_with_digital_silence_is_capped():
    audio = torch.cat([sine(1000.0, 0.5), torch.zeros(SAMPLE_RATE // 2)])[None]
    assert measure_quality(audio, SAMPLE_RATE).snr_db == SNR_CAP_DB


def test_clipping_counts_and_longest_run_on_a_hand_built_signal():
    audio = torch.zeros(2, 10000)
    audio[0, 100:105] = 1.0  # run of 5
    audio[0, 200:203] = -1.0  # run of 3
    audio[1, 500:512] = CLIP_THRESHOLD  # run of 12 at exactly the threshold
    audio[1, 600] = 0.998  # just below: not clipped
    audio[1, -4:] = 1.0  # run of 4 touching the end
    m = measure_quality(audio, SAMPLE_RATE)
    assert m.clipped_samples == 24
    assert m.clipped_percent == pytest.approx(100 * 24 / 20000)
    assert m.longest_clip_run == 12
    assert m.rating == "red" and m.rating_reason.startswith("clipping: 0.12 %")


def test_longest_runs_per_batch_item_across_channels():
    mask = torch.zeros(3, 2, 20, dtype=torch.bool)
    mask[0, 1, 3:10] = True
    mask[0, 0, 0:2] = True
    mask[2, 0, 15:20] = True
    mask[2, 1, :] = True
    assert longest_runs(mask).tolist() == [7, 0, 20]


def test_dc_offset_is_largest_absolute_channel_mean():
    audio = torch.stack([sine(100.0, 1.0, -6.0) + 0.02, sine(100.0, 1.0, -6.0) - 0.07])
    m = measure_quality(audio, SAMPLE_RATE)
    assert m.dc_offset == pytest.approx(0.07, abs=1e-4)
    assert m.rating == "red" and m.rating_reason == "dc offset: 0.070 (limit 0.05)"


def test_silent_frame_fraction_of_half_silent_signal_is_one_half():
    audio = torch.cat([sine(440.0, 1.0), torch.zeros(SAMPLE_RATE)])[None]
    m = measure_quality(audio, SAMPLE_RATE)
    assert m.silent_frame_fraction == pytest.approx(0.5)
    assert m.rating == "yellow" and m.rating_reason.startswith("mostly silent: 50 %")


def test_lr_correlation_is_1_for_identical_and_minus_1_for_inverted_channels():
    x = with_gaps(sine(440.0, 2.0))
    identical = measure_quality(torch.stack([x, x]), SAMPLE_RATE)
    inverted = measure_quality(torch.stack([x, -x]), SAMPLE_RATE)
    assert identical.lr_correlation == pytest.approx(1.0, abs=1e-6)
    assert inverted.lr_correlation == pytest.approx(-1.0, abs=1e-6)
    assert inverted.rating == "yellow"
    assert inverted.rating_reason.startswith("mono compatibility: L/R correlation -1.00")


def test_nan_input_is_red_not_finite_and_serializes_to_strict_json():
    audio = sine(440.0, 1.0)[None].clone()
    audio[0, 1000:1010] = math.nan
    audio[0, 2000] = math.inf
    m = measure_quality(audio, SAMPLE_RATE)
    assert m.finite is False and m.rating == "red"
    assert m.rating_reason == "non-finite: 11 samples are NaN or infinite"
    assert m.peak_dbfs == pytest.approx(-1.0, abs=1e-3)  # measured on the finite samples
    json.dumps(m.to_dict(), allow_nan=False)


def test_silence_is_red_and_its_undefined_values_serialize_as_none():
    m = measure_quality(torch.zeros(2, SAMPLE_RATE), SAMPLE_RATE)
    assert m.peak_dbfs == -math.inf and m.rating == "red" and m.rating_reason.startswith("silent: peak")
    d = m.to_dict()
    assert d["peak_dbfs"] is None and d["rms_dbfs"] is None and d["snr_db"] is None and d["loudness_lufs"] is None
    assert d["lr_correlation"] == 0.0 and d["silent_frame_fraction"] == 1.0
    json.dumps(d, allow_nan=False)
    assert set(d) == {f for f in QualityMetrics.__dataclass_fields__}


def test_bs1770_loudness_of_997hz_sine_matches_reference_levels():
    # BS.1770: a full-scale 997 Hz sine in one channel reads -3.01 LUFS; loudness scales with level.
    full = measure_quality(sine(997.0, 2.0, 0.0)[None], SAMPLE_RATE)
    assert full.loudness_lufs == pytest.approx(-3.01, abs=0.1)
    quiet = measure_quality(sine(997.0, 2.0, -20.0)[None], SAMPLE_RATE)
    assert quiet.loudness_lufs == pytest.approx(-23.01, abs=0.1)
    # Two identical channels add their powers: +3.01 LU.
    stereo = measure_quality(sine(997.0, 2.0, -20.0).expand(2, -1), SAMPLE_RATE)
    assert stereo.loudness_lufs == pytest.approx(-20.0, abs=0.1)


def test_loudness_of_bright_full_scale_audio_is_not_limited_by_filter_clamping():
    # K-weighting lifts 8 kHz by about 3.3 dB: above full scale inside the filter.
    loud = measure_quality(sine(8000.0, 2.0, 0.0)[None], SAMPLE_RATE).loudness_lufs
    quiet = measure_quality(sine(8000.0, 2.0, -20.0)[None], SAMPLE_RATE).loudness_lufs
    assert loud - quiet == pytest.approx(20.0, abs=0.05)


def test_audio_shorter_than_one_gating_block_is_measured_as_the_block_that_holds_it():
    # A hit of 0.1 s in a 400 ms block of silence: its power over the block, 10*log10(0.1/0.4) = -6.02 LU
    # below the same sine played for seconds.
    long = measure_quality(sine(997.0, 2.0)[None], SAMPLE_RATE).loudness_lufs
    short = measure_quality(sine(997.0, 0.1)[None], SAMPLE_RATE).loudness_lufs
    assert short == pytest.approx(long - 6.02, abs=0.15)
    assert measure_quality(torch.zeros(1, 2400), SAMPLE_RATE).loudness_lufs is None


def test_clean_tone_bursts_rate_green_and_single_clipped_sample_rates_yellow():
    tone = with_gaps(sine(440.0, 2.0, -3.0)) + 1e-4
    m = measure_quality(tone[None], SAMPLE_RATE)
    assert (m.rating, m.rating_reason) == ("green", "all checks passed")
    clipped = tone.clone()
    clipped[5000] = 1.0
    m = measure_quality(clipped[None], SAMPLE_RATE)
    assert (m.rating, m.rating_reason) == ("yellow", "clipping: 1 samples at full scale")


def test_steady_signals_read_near_0_db_snr_but_still_rate_green():
    # The reference-free estimate sees no floor below a steady signal: clean or not, it reads ~0 dB,
    # so the SNR must not decide the rating of steady textures.
    for steady in (noise(SAMPLE_RATE, -20.0).float(), sine(440.0, 1.0, -3.0)):
        m = measure_quality(steady[None], SAMPLE_RATE)
        assert m.snr_db < 1.0
        assert (m.rating, m.rating_reason) == ("green", "all checks passed")


@pytest.mark.determinism
def test_batch_measures_each_item_like_single_measurement():
    items = torch.stack(
        [
            torch.stack([sine(440.0, 1.0), sine(440.0, 1.0, -10.0)]),
            torch.zeros(2, SAMPLE_RATE),
            torch.stack([noise(SAMPLE_RATE, -30.0, 1), noise(SAMPLE_RATE, -30.0, 2)]).float(),
        ]
    )
    batch = assert_batch_consistency(lambda x: [m.to_dict() for m in measure_quality_batch(x, SAMPLE_RATE)], items)
    assert len(batch) == 3
    for got, item in zip(batch, items, strict=True):
        assert got == measure_quality(item, SAMPLE_RATE).to_dict()


@pytest.mark.determinism
def test_items_of_their_own_lengths_are_measured_over_those_lengths_only():
    """One-shots: item i counts its first frames[i] samples, as if cut to them and measured alone."""
    hit = torch.stack([sine(440.0, 1.0), sine(440.0, 1.0, -10.0)])
    short = torch.cat([hit[:, : SAMPLE_RATE // 4], torch.zeros(2, SAMPLE_RATE - SAMPLE_RATE // 4)], dim=1)
    padded = torch.stack([short, hit * 0.5])  # the first item's last 0.75 s are padding
    lengths = [SAMPLE_RATE // 4, SAMPLE_RATE]
    measured = measure_quality_batch(padded, SAMPLE_RATE, lengths)
    for got, item, n in zip(measured, padded, lengths, strict=True):
        assert got.to_dict() == measure_quality(item[:, :n].clone(), SAMPLE_RATE).to_dict()
    # the padding would have counted as silent frames
    assert measured[0].silent_frame_fraction == 0.0 < measure_quality(padded[0], SAMPLE_RATE).silent_frame_fraction
    with pytest.raises(ValueError, match="frames="):
        measure_quality_batch(padded, SAMPLE_RATE, [0, SAMPLE_RATE])


def test_measure_quality_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"\[channels, samples\]"):
        measure_quality(torch.zeros(10), SAMPLE_RATE)
    with pytest.raises(ValueError, match="samples >= 1"):
        measure_quality_batch(torch.zeros(1, 1, 0), SAMPLE_RATE)


def test_a_lone_click_in_silence_is_red_for_silent_frames():
    audio = torch.zeros(1, 2 * SAMPLE_RATE)
    audio[0, 1000:1960] = sine(1000.0, 0.02)
    m = measure_quality(audio, SAMPLE_RATE)
    assert m.peak_dbfs == pytest.approx(-1.0, abs=0.01)
    assert m.silent_frame_fraction == pytest.approx(39 / 40)
    assert (m.rating, m.rating_reason) == ("red", "silent: 98 % of 50 ms frames below -60 dBFS (limit 95 %)")


def test_small_dc_offset_rates_yellow():
    m = measure_quality((with_gaps(sine(440.0, 2.0, -3.0)) + 0.02)[None], SAMPLE_RATE)
    assert (m.rating, m.rating_reason) == ("yellow", "dc offset: 0.020 (limit 0.01)")


def test_segmented_loudness_equals_torchaudios_whole_signal_loudness(monkeypatch):
    # Long files are K-weighted in segments (flat memory); the gated loudness must not change.
    import torchaudio

    import sda.dsp.quality as quality

    g = torch.Generator().manual_seed(5)
    audio = 0.05 * torch.randn(2, 2, 5 * 48000, generator=g)
    audio[1] *= torch.linspace(0, 1, audio.shape[-1])  # a fade-in: the relative gate matters
    monkeypatch.setattr(quality, "LOUDNESS_SEGMENT_BLOCKS", 7)
    ours = quality.gated_loudness(quality.k_weighted_block_energies(audio, 48000))
    reference = torchaudio.functional.loudness(audio, 48000)
    assert torch.allclose(ours, reference, atol=1e-3)


@pytest.mark.parametrize("sample_rate", [44100, 48000, 96000])
def test_the_fir_k_weighting_of_a_gpu_gives_the_biquads_loudness(sample_rate):
    # A GPU K-weights with the filters' impulse response by FFT (torchaudio's recursion is
    # sequential in time); blocks and loudness must agree with the biquads to float32 rounding.
    import sda.dsp.quality as quality

    g = torch.Generator().manual_seed(5)
    audio = 0.05 * torch.randn(2, 2, 3 * sample_rate, generator=g)
    audio[1] *= torch.linspace(0, 1, audio.shape[-1])  # a fade-in: the relative gate matters
    audio[0, 0, :sample_rate] *= 1e-3  # a quiet second: the absolute gate matters
    biquads = quality.k_weighted_block_energies(audio, sample_rate).double()  # the CPU's way
    fir = quality.k_weighted_block_energies_fir(audio, sample_rate)
    assert fir.shape == biquads.shape
    assert torch.allclose(fir, biquads, rtol=1e-4, atol=0)
    difference = quality.gated_loudness(fir) - quality.gated_loudness(biquads)
    assert difference.abs().max() < 1e-4  # LU
