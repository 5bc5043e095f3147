"""Loudness and true peak of delivered audio, and loudness normalization under a true-peak ceiling.

- Integrated loudness: ITU-R BS.1770-4, gated, in LUFS (`sda.dsp.quality.integrated_loudness`:
  K-weighting, 400 ms blocks at 75 % overlap, absolute gate at -70 LUFS, relative gate 10 LU down).
  Audio shorter than one block is measured as the one block that holds it.
- True peak: the largest magnitude of the signal oversampled TRUE_PEAK_OVERSAMPLING (4) times, as
  BS.1770-4 Annex 2 describes, in dBTP (dB re full scale). The interpolator is a Kaiser-windowed
  sinc of TRUE_PEAK_HALF_TAPS (24) input samples either side of each new point (the Annex's
  example filter has 6, and under-reads by up to 0.5 dB); its error is under 0.005 dB for any
  content up to 20 kHz at 44.1 kHz and above. A sample is its own value, so the true peak is
  never below the sample peak. A full-scale sine at a quarter of the rate, sampled 45 degrees off
  its crests, reads 0.00 dBTP where its samples read -3.01 dBFS.
- `normalize_loudness`: one gain per item, to reach the target loudness, or the largest gain that
  keeps the true peak at the ceiling, whichever is smaller; the shortfall says by how many LU the
  item stayed under its target.

Every function works item by item (`[channels, samples]`), so an item's figures and gain are the
same in any batch. Loudness is measured in float64; the true peak's interpolation in float32 (its
rounding, about 1e-7 of full scale, is far below what the margins here allow for).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from sda.dsp.quality import integrated_loudness

TRUE_PEAK_OVERSAMPLING = 4
TRUE_PEAK_HALF_TAPS = 24
TRUE_PEAK_ROLLOFF = 1.0  # cutoff of the interpolator, as a fraction of the input's Nyquist
TRUE_PEAK_KAISER_BETA = 7.0
# Input samples per row and convolution call: bounds memory for long files (4 x 2^18 floats per row).
TRUE_PEAK_BLOCK = 1 << 18
# How far under the ceiling an item held back by it is put: more than float32 rounding can add.
TRUE_PEAK_MARGIN_DB = 1e-4


@functools.lru_cache(maxsize=8)
def true_peak_kernel(device: str, dtype: torch.dtype) -> torch.Tensor:
    """`[TRUE_PEAK_OVERSAMPLING, 1, 2 * TRUE_PEAK_HALF_TAPS + 1]`: row p interpolates the point p/4
    of a sample period after each input sample (row 0 is the sample itself). Cached: do not modify."""
    half = TRUE_PEAK_HALF_TAPS
    offsets = torch.arange(-half, half + 1, dtype=torch.float64)  # input sample j relative to n
    phases = torch.arange(TRUE_PEAK_OVERSAMPLING, dtype=torch.float64)[:, None] / TRUE_PEAK_OVERSAMPLING
    t = phases - offsets[None, :]  # distance from each input sample to the new point, in samples
    rows = TRUE_PEAK_ROLLOFF * torch.sinc(TRUE_PEAK_ROLLOFF * t)
    window = torch.special.i0(TRUE_PEAK_KAISER_BETA * torch.sqrt((1 - (t / (half + 1)) ** 2).clamp(min=0)))
    rows = rows * window / torch.special.i0(torch.tensor(TRUE_PEAK_KAISER_BETA, dtype=torch.float64))
    rows = rows / rows.sum(dim=1, keepdim=True)  # unit gain at DC on every phase
    rows[0] = 0.0
    rows[0, half] = 1.0
    return rows[:, None, :].to(device=device, dtype=dtype)


def true_peak(audio: torch.Tensor) -> float:
    """True peak of one item `[channels, samples]` as a linear amplitude (max over channels).
    Outside the item is silence (a file starts and ends there), so points after the last sample
    are interpolated too."""
    if audio.dim() != 2:
        raise ValueError(f"audio has shape {tuple(audio.shape)}: expected [channels, samples]")
    if audio.shape[-1] == 0:
        return 0.0
    x = audio.to(torch.float32)
    kernel = true_peak_kernel(str(x.device), x.dtype)
    half = TRUE_PEAK_HALF_TAPS
    rows = x.reshape(-1, 1, x.shape[-1])
    padded = torch.nn.functional.pad(rows, (half, half))
    peak = torch.zeros((), dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[-1], TRUE_PEAK_BLOCK):
        stop = min(start + TRUE_PEAK_BLOCK, x.shape[-1])
        block = padded[..., start : stop + 2 * half]
        peak = torch.maximum(peak, torch.nn.functional.conv1d(block, kernel).abs().amax())
    return float(peak)


def loudness_lufs(audio: torch.Tensor, sample_rate: int) -> float | None:
    """BS.1770 integrated loudness of one item `[channels, samples]`; None for silence or more
    than 5 channels."""
    if audio.dim() != 2:
        raise ValueError(f"audio has shape {tuple(audio.shape)}: expected [channels, samples]")
    if audio.shape[0] > 5 or audio.shape[-1] == 0:
        return None
    x = audio.to(torch.float64)[None]
    value = float(integrated_loudness(x, sample_rate, x.abs().amax(dim=(1, 2)))[0])
    return value if math.isfinite(value) else None


def amplitude_dbtp(amplitude: float) -> float | None:
    return 20.0 * math.log10(amplitude) if amplitude > 0 else None


@dataclass(frozen=True)
class Levels:
    """Loudness and true peak of one delivered item (None: silence). What every sidecar records."""

    integrated_lufs: float | None
    true_peak_dbtp: float | None

    @classmethod
    def of(cls, audio: torch.Tensor, sample_rate: int) -> Levels:
        """Measured on one item `[channels, samples]`."""
        return cls(loudness_lufs(audio, sample_rate), amplitude_dbtp(true_peak(audio)))


@dataclass(frozen=True)
class LoudnessNormalization:
    """What `normalize_loudness` did to one item: its gain, and its levels after it. `shortfall_lu`:
    by how many LU the item stays under the target because the true-peak ceiling held it back
    (0 when the target was reached; None for silence, which is left alone)."""

    gain_db: float
    levels: Levels
    shortfall_lu: float | None

    @property
    def limited_by_true_peak(self) -> bool:
        return bool(self.shortfall_lu)


def normalize_loudness(
    audio: torch.Tensor, sample_rate: int, target_lufs: float, ceiling_dbtp: float
) -> tuple[torch.Tensor, LoudnessNormalization]:
    """One item `[channels, samples]` scaled to `target_lufs`, or to a true peak of `ceiling_dbtp`
    when reaching the target would take it higher. Silence is returned unchanged."""
    before = Levels.of(audio, sample_rate)
    if before.integrated_lufs is None or before.true_peak_dbtp is None:
        return audio, LoudnessNormalization(0.0, before, None)
    wanted_db = target_lufs - before.integrated_lufs
    allowed_db = ceiling_dbtp - before.true_peak_dbtp
    if wanted_db <= allowed_db:
        gain_db, shortfall = wanted_db, 0.0
    else:
        # A hair under the ceiling: the float32 product may round up by an ulp.
        gain_db, shortfall = allowed_db - TRUE_PEAK_MARGIN_DB, wanted_db - allowed_db
    gain = 10.0 ** (gain_db / 20.0)
    levels = Levels(before.integrated_lufs + gain_db, before.true_peak_dbtp + gain_db)
    return audio * torch.tensor(gain, dtype=audio.dtype, device=audio.device), LoudnessNormalization(
        gain_db, levels, shortfall
    )
