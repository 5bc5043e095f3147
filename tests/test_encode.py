"""Encoding audio in memory: every format and bit depth, the -1 dBFS ceiling in what a reader
decodes, TPDF dither, rounding, and the same bytes for the same audio (Ogg serials included)."""

from __future__ import annotations

import io
import math
import re

import numpy as np
import pytest
import soundfile as sf

from sda.encode import encode_audio, quantize
from tests.helpers import CEILING, FORMATS

FORMAT_IDS = [f"{f}{d}" for f, d, _, _ in FORMATS]


# --------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize(
    "format, bit_depth, reason",
    [("wav", 8, "bit_depth=8"), ("flac", 32, "bit_depth=32"), ("ogg", 24, "bit_depth=24"), ("mp3", 16, "format='mp3'")],
)
def test_unsupported_format_and_depth_pairs_are_refused_naming_what_is_allowed(format, bit_depth, reason):
    with pytest.raises(ValueError, match=re.escape(reason) + ".*allowed"):
        encode_audio(np.zeros((1, 10), np.float32), 48000, format, bit_depth)


def test_non_finite_or_misshapen_audio_and_unknown_tags_are_refused():
    good = np.zeros((2, 100), np.float32)
    bad = good.copy()
    bad[1, 50] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        encode_audio(bad, 48000, "wav", 24)
    with pytest.raises(ValueError, match="channels, frames"):
        encode_audio(np.zeros(100, np.float32), 48000, "wav", 24)
    with pytest.raises(ValueError, match="channels, frames"):
        encode_audio(np.zeros((1, 0), np.float32), 48000, "wav", 24)
    with pytest.raises(ValueError, match="tags"):
        encode_audio(good, 48000, "wav", 24, tags={"producer": "x"})


# --------------------------------------------------------------------------------------------
# Level: the ceiling holds in what a reader decodes


@pytest.mark.parametrize("format, bit_depth", [(f, d) for f, d, _, _ in FORMATS], ids=FORMAT_IDS)
@pytest.mark.parametrize("level_db", [-1.0, 0.0, 6.0])
def test_audio_at_or_above_full_scale_is_held_under_the_ceiling(format, bit_depth, level_db):
    t = np.arange(24000) / 48000
    tone = np.stack([np.sin(2 * np.pi * 997 * t), np.sin(2 * np.pi * 1499 * t + 1)])
    audio = (tone / np.abs(tone).max() * 10 ** (level_db / 20)).astype(np.float32)
    encoded = encode_audio(audio, 48000, format, bit_depth, dither_seed=3)
    decoded, _ = sf.read(io.BytesIO(encoded.data), dtype="float64")
    assert np.abs(decoded).max() <= CEILING
    assert encoded.peak_dbfs <= -1.0
    assert decoded.shape == (24000, 2)


@pytest.mark.parametrize("format, bit_depth", [(f, d) for f, d, _, _ in FORMATS], ids=FORMAT_IDS)
@pytest.mark.parametrize("level_db", [-1.0, -20.0, -95.0])
def test_the_recorded_peak_is_exactly_what_a_reader_decodes(format, bit_depth, level_db):
    """PCM's peak is computed from the integers handed to libsndfile, not by decoding the file:
    it must be the decoded peak to the last bit (negative full-scale samples included)."""
    noise = np.random.default_rng(7).standard_normal((2, 9000))
    audio = (noise / np.abs(noise).max() * 10 ** (level_db / 20)).astype(np.float32)
    audio[1, 100] = -np.abs(audio).max()  # the peak on a negative sample
    encoded = encode_audio(audio, 48000, format, bit_depth, dither_seed=5)
    decoded, _ = sf.read(io.BytesIO(encoded.data), dtype="float64")
    assert encoded.peak_dbfs == 20 * math.log10(np.abs(decoded).max())


# --------------------------------------------------------------------------------------------
# Quantization


def test_16_bit_has_tpdf_dither_whose_error_does_not_depend_on_the_signal():
    """TPDF dither (+-1 LSB triangular) makes the total error (output - input) zero-mean with
    variance 1/4 LSB^2 whatever the input: plain rounding would give an error fixed by the input
    (a sawtooth of the fractional part, variance 1/12), rectangular dither a variance that swings
    with it. Checked per bin of the input's fractional part on a quiet ramp of +-4 LSB."""
    lsb = 2.0**-15
    n = 2**17
    ramp_lsb = np.linspace(-4.0, 4.0, n)
    encoded = encode_audio((ramp_lsb * lsb)[None].astype(np.float64), 48000, "wav", 16, dither_seed=1)
    samples, _ = sf.read(io.BytesIO(encoded.data), dtype="int16")
    error = samples.astype(np.float64) - ramp_lsb

    assert abs(error.mean()) < 0.01
    assert error.var() == pytest.approx(0.25, abs=0.01)
    assert np.abs(error).max() <= 1.5  # rint(x + d) with |d| < 1
    fraction = ramp_lsb - np.floor(ramp_lsb)
    for low in np.arange(0.0, 1.0, 0.125):
        in_bin = error[(fraction >= low) & (fraction < low + 0.125)]
        assert abs(in_bin.mean()) < 0.02, f"error biased for fractions near {low}"
        assert in_bin.var() == pytest.approx(0.25, abs=0.02), f"noise level swings for fractions near {low}"
    # consecutive errors are uncorrelated (white dither), and the dither is seeded, not global
    assert abs(np.corrcoef(error[:-1], error[1:])[0, 1]) < 0.02
    again = encode_audio((ramp_lsb * lsb)[None], 48000, "wav", 16, dither_seed=1)
    other = encode_audio((ramp_lsb * lsb)[None], 48000, "wav", 16, dither_seed=2)
    assert again.data == encoded.data
    assert other.data != encoded.data


def test_24_bit_rounds_to_the_nearest_step_and_32_bit_keeps_the_floats():
    step = 2.0**-23
    codes = np.array([-1000, -1, 0, 1, 12345, 7_000_000])
    offsets = np.array([0.49, -0.49, 0.3, -0.3, 0.0, 0.2])
    audio = ((codes + offsets) * step)[None]
    encoded = encode_audio(audio, 48000, "wav", 24)
    samples, _ = sf.read(io.BytesIO(encoded.data), dtype="int32")
    assert np.array_equal(samples >> 8, codes)

    floats = np.array([[0.5, -0.25, 1e-6, -0.8]], np.float32)
    decoded, _ = sf.read(io.BytesIO(encode_audio(floats, 48000, "wav", 32).data), dtype="float32")
    assert np.array_equal(decoded, floats[0])


@pytest.mark.parametrize("format, bit_depth", [(f, d) for f, d, _, _ in FORMATS], ids=FORMAT_IDS)
def test_the_same_audio_always_encodes_to_the_same_bytes(format, bit_depth):
    rng = np.random.default_rng(0)
    audio = (0.2 * rng.standard_normal((2, 24000))).astype(np.float32)
    tags = {"title": "t", "comment": "c", "software": "s"}
    first = encode_audio(audio, 48000, format, bit_depth, tags=tags, dither_seed=9)
    second = encode_audio(audio, 48000, format, bit_depth, tags=tags, dither_seed=9)
    assert first.data == second.data and first.sha256 == second.sha256
    assert sf.info(io.BytesIO(first.data)).frames == 24000


@pytest.mark.slow
def test_long_stereo_ogg_encodes_and_decodes_to_every_frame():
    # One 90 s write crashed libsndfile's Vorbis encoder (stack overflow); blocks must not.
    rng = np.random.default_rng(3)
    audio = (0.1 * rng.standard_normal((2, 48000 * 90))).astype(np.float32)
    encoded = encode_audio(audio, 48000, "ogg", 16)
    decoded, rate = sf.read(io.BytesIO(encoded.data), always_2d=True)
    assert rate == 48000 and decoded.shape == (48000 * 90, 2)
    assert np.abs(decoded).max() <= CEILING


def test_24_bit_integers_of_float32_audio_are_those_of_its_float64_values():
    """float32 audio is quantized to 24 bits in float32 (exact: a power-of-two scale, then
    rounding to an integer); the integers must be those the float64 path gives."""
    g = np.random.default_rng(3)
    lsb = 2.0**-23
    halves = (np.arange(-2000, 2000) + 0.5) * lsb  # exactly half-way between two steps
    audio = np.concatenate([g.uniform(-1.2, 1.2, 50_000), halves, [0.0, -0.0, 1.0, -1.0, 1e-30, lsb / 3]])
    audio = np.stack([audio, audio[::-1]]).astype(np.float32)
    assert np.array_equal(quantize(audio, 24, -1.0, 0), quantize(audio.astype(np.float64), 24, -1.0, 0))
