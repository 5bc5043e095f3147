"""Quality metrics of rendered audio and a traffic-light rating with a one-line reason.

Shapes: one item `[channels, samples]`, or a batch `[batch, channels, samples]` whose statistics
are computed together. Frame statistics use non-overlapping 50 ms frames; a tail shorter than a
frame is left out of them (a signal shorter than one frame is one frame).

Rating rules, checked in this order; the first that fires gives the rating and the reason:

| rating | rule               | fires when                                                 |
|--------|--------------------|------------------------------------------------------------|
| red    | non-finite         | any NaN or infinite sample                                 |
| red    | silent             | peak_dbfs < RED_SILENT_PEAK_DBFS (-60)                     |
| red    | silent             | silent_frame_fraction > RED_SILENT_FRAME_FRACTION (0.95)   |
| red    | clipping           | clipped_percent > RED_CLIPPED_PERCENT (0.1 %)              |
| red    | dc offset          | dc_offset > RED_DC_OFFSET (0.05)                           |
| yellow | mostly silent      | silent_frame_fraction > YELLOW_SILENT_FRAME_FRACTION (0.3) |
| yellow | dc offset          | dc_offset > YELLOW_DC_OFFSET (0.01)                        |
| yellow | mono compatibility | lr_correlation < YELLOW_LR_CORRELATION (-0.3)              |
| yellow | clipping           | clipped_samples > 0                                        |
| green  |                    | none of the above                                          |

The SNR is an estimate without a reference: mean power over the noise-floor power, the floor
being the 10th percentile of the 50 ms frame powers. It measures how far the signal stands above
its quietest tenth, so a steady texture (rain, wind, a drone) reads near 0 dB even when clean.
That is why the SNR is reported but takes no part in the rating: most of what sda generates is
steady, and a rule on it would mark clean textures as noisy.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torchaudio

from sda.dsp.filters import causal_fir
from sda.dsp.stereo import lr_correlation as stereo_correlation

FRAME_S = 0.05
CLIP_THRESHOLD = 0.999
SILENT_FRAME_DBFS = -60.0
NOISE_FLOOR_QUANTILE = 0.1
SNR_CAP_DB = 120.0
# torchaudio's K-weighting filters clamp their output to [-1, 1]; the K filter's impulse response
# sums to at most 3.4 in absolute value, so items peaking above 0.25 are measured scaled down to a
# 0.25 peak and the gain is added back. The -70 LUFS absolute gate then acts 20*log10(peak/0.25) dB
# higher, which changes the result only for items whose loudness lies ~48 dB or more below their peak.
LOUDNESS_PEAK_LIMIT = 0.25

RED_SILENT_PEAK_DBFS = -60.0
RED_SILENT_FRAME_FRACTION = 0.95
RED_CLIPPED_PERCENT = 0.1
RED_DC_OFFSET = 0.05
YELLOW_SILENT_FRAME_FRACTION = 0.3
YELLOW_DC_OFFSET = 0.01
YELLOW_LR_CORRELATION = -0.3


@dataclass(frozen=True)
class QualityMetrics:
    """Measurements of one item. Levels in dBFS are -inf for digital silence; undefined values
    (SNR of silence) are NaN here and None in `to_dict()`. For non-finite input every field but
    `finite` is measured with the non-finite samples counted as 0."""

    snr_db: float  # mean power over the 10th-percentile 50 ms frame power, capped at SNR_CAP_DB
    clipped_samples: int  # samples with |x| >= CLIP_THRESHOLD, all channels
    clipped_percent: float  # of all samples in all channels
    longest_clip_run: int  # longest run of consecutive clipped samples in any one channel
    peak_dbfs: float
    rms_dbfs: float  # over all channels
    dc_offset: float  # largest absolute per-channel mean
    silent_frame_fraction: float  # 50 ms frames (all channels together) with RMS below -60 dBFS
    lr_correlation: float | None  # Pearson correlation of L and R; None unless two channels
    loudness_lufs: float | None  # BS.1770 integrated loudness (see integrated_loudness); None if silent or > 5 channels
    finite: bool
    rating: str  # 'green' | 'yellow' | 'red'
    rating_reason: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe values: non-finite floats become None."""
        return {
            key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in dataclasses.asdict(self).items()
        }


def rate(values: dict[str, Any], non_finite_samples: int) -> tuple[str, str]:
    """(rating, reason) for measured `values` (the QualityMetrics fields but the rating)."""
    if non_finite_samples > 0:
        return "red", f"non-finite: {non_finite_samples} samples are NaN or infinite"
    if values["peak_dbfs"] < RED_SILENT_PEAK_DBFS:
        return "red", f"silent: peak {values['peak_dbfs']:.1f} dBFS (limit {RED_SILENT_PEAK_DBFS:g} dBFS)"
    silent_fraction = values["silent_frame_fraction"]
    if silent_fraction > RED_SILENT_FRAME_FRACTION:
        return "red", (
            f"silent: {100 * silent_fraction:.0f} % of 50 ms frames below {SILENT_FRAME_DBFS:g} dBFS "
            f"(limit {100 * RED_SILENT_FRAME_FRACTION:g} %)"
        )
    if values["clipped_percent"] > RED_CLIPPED_PERCENT:
        return "red", (
            f"clipping: {values['clipped_percent']:.2f} % of samples at full scale (limit {RED_CLIPPED_PERCENT:g} %)"
        )
    if values["dc_offset"] > RED_DC_OFFSET:
        return "red", f"dc offset: {values['dc_offset']:.3f} (limit {RED_DC_OFFSET:g})"
    if silent_fraction > YELLOW_SILENT_FRAME_FRACTION:
        return "yellow", (
            f"mostly silent: {100 * silent_fraction:.0f} % of 50 ms frames below {SILENT_FRAME_DBFS:g} dBFS "
            f"(limit {100 * YELLOW_SILENT_FRAME_FRACTION:g} %)"
        )
    if values["dc_offset"] > YELLOW_DC_OFFSET:
        return "yellow", f"dc offset: {values['dc_offset']:.3f} (limit {YELLOW_DC_OFFSET:g})"
    correlation = values["lr_correlation"]
    if correlation is not None and correlation < YELLOW_LR_CORRELATION:
        return "yellow", f"mono compatibility: L/R correlation {correlation:.2f} (limit {YELLOW_LR_CORRELATION:g})"
    if values["clipped_samples"] > 0:
        return "yellow", f"clipping: {values['clipped_samples']} samples at full scale"
    return "green", "all checks passed"


def frame_powers(audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Mean square over channels of each non-overlapping 50 ms frame: `[B, C, N]` -> `[B, n_frames]`."""
    batch, channels, samples = audio.shape
    frame = max(1, min(round(FRAME_S * sample_rate), samples))
    n_frames = samples // frame
    frames = audio[..., : n_frames * frame].reshape(batch, channels, n_frames, frame)
    return frames.square().mean(dim=(1, 3))


def longest_runs(mask: torch.Tensor) -> torch.Tensor:
    """Longest run of True along the last dim of `[B, C, N]`, max over channels -> `[B]` (int64)."""
    batch = mask.shape[0]
    edges = torch.nn.functional.pad(mask.to(torch.int8), (1, 1)).diff(dim=-1)
    # Per row, rises (0->1) and falls (1->0) alternate and come out of nonzero() in order, so the
    # k-th rise pairs with the k-th fall.
    starts = (edges == 1).nonzero()
    ends = (edges == -1).nonzero()
    runs = ends[:, 2] - starts[:, 2]
    longest = torch.zeros(batch, dtype=torch.int64, device=mask.device)
    return longest.scatter_reduce(0, starts[:, 0], runs, reduce="amax")


# BS.1770 gating blocks, and how the K-weighting is applied to a long signal: in segments of
# LOUDNESS_SEGMENT_BLOCKS blocks, each filtered from LOUDNESS_WARMUP_S earlier so the filters'
# start-up (time constants of a few ms) has died away; memory then stays flat for 600 s files.
GATE_S = 0.4
GATE_OVERLAP = 0.75
LOUDNESS_SEGMENT_BLOCKS = 600
LOUDNESS_WARMUP_S = 0.5
CHANNEL_WEIGHTS = (1.0, 1.0, 1.0, 1.41, 1.41)


# On a GPU the K-weighting runs as a causal FIR (its impulse response cut at K_RESPONSE_S, where
# the 38 Hz high-pass, a double pole with a 4.2 ms time constant, has decayed by 5e-25) applied by
# FFT: torchaudio's recursive filter is sequential along time, one GPU thread per channel (10 s
# for a 600 s file on an H200). The two agree to float32 rounding (tests/dsp/test_quality.py).
K_RESPONSE_S = 0.25
IMPULSE_AMPLITUDE = 1e-3


def k_weighted_block_energies(audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Mean square of the K-weighted signal in each 400 ms block (75 % overlap): `[B, C, N]` ->
    `[B, C, blocks]`. Audio must lie within [-1, 1] (torchaudio's biquads clamp their output).
    On a CPU by torchaudio's biquads in segments; on any other device `k_weighted_block_energies_fir`."""
    if audio.device.type != "cpu":
        return k_weighted_block_energies_fir(audio, sample_rate)
    gate = round(GATE_S * sample_rate)
    step = round(gate * (1 - GATE_OVERLAP))
    blocks = (audio.shape[-1] - gate) // step + 1
    warmup = round(LOUDNESS_WARMUP_S * sample_rate)
    energies = []
    for first in range(0, blocks, LOUDNESS_SEGMENT_BLOCKS):
        last = min(blocks, first + LOUDNESS_SEGMENT_BLOCKS)
        start, end = first * step, (last - 1) * step + gate
        lead = min(warmup, start)
        x = audio[..., start - lead : end]
        x = torchaudio.functional.treble_biquad(x, sample_rate, 4.0, 1500.0, 1 / math.sqrt(2))
        x = torchaudio.functional.highpass_biquad(x, sample_rate, 38.0, 0.5)
        energies.append(x[..., lead:].square().unfold(-1, gate, step).mean(dim=-1))
    return torch.cat(energies, dim=-1)


@functools.lru_cache(maxsize=8)
def k_weighting_response(sample_rate: int) -> torch.Tensor:
    """The K-weighting's impulse response `[round(K_RESPONSE_S * sample_rate)]`, float64 on the
    CPU: torchaudio's two biquads applied to a small impulse (their output clamp never acts)."""
    impulse = torch.zeros(round(K_RESPONSE_S * sample_rate), dtype=torch.float64)
    impulse[0] = IMPULSE_AMPLITUDE
    x = torchaudio.functional.treble_biquad(impulse, sample_rate, 4.0, 1500.0, 1 / math.sqrt(2))
    x = torchaudio.functional.highpass_biquad(x, sample_rate, 38.0, 0.5)
    return x / IMPULSE_AMPLITUDE


def k_weighted_block_energies_fir(audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """`k_weighted_block_energies` by FFT convolution with `k_weighting_response`, on the audio's
    device, every block of every item at once; block energies accumulated in float64."""
    gate = round(GATE_S * sample_rate)
    step = round(gate * (1 - GATE_OVERLAP))
    blocks = (audio.shape[-1] - gate) // step + 1
    weighted = causal_fir(audio.float(), k_weighting_response(sample_rate))
    squares = weighted.square()
    del weighted
    if gate % step:  # blocks are not whole steps: mean over each block
        return squares.unfold(-1, gate, step).mean(dim=-1, dtype=torch.float64)
    per_gate = gate // step
    steps = blocks + per_gate - 1
    sums = squares[..., : steps * step].reshape(*squares.shape[:-1], steps, step).sum(dim=-1, dtype=torch.float64)
    return sum(sums[..., i : i + blocks] for i in range(per_gate)) / gate


def gated_loudness(energies: torch.Tensor) -> torch.Tensor:
    """BS.1770 integrated loudness `[B]` in LUFS from block energies `[B, C, blocks]`: absolute
    gate at -70 LUFS, then a relative gate 10 LU below the absolutely gated loudness."""
    weights = torch.tensor(CHANNEL_WEIGHTS[: energies.shape[-2]], dtype=energies.dtype, device=energies.device)
    block_loudness = -0.691 + 10 * torch.log10((weights[:, None] * energies).sum(dim=-2))
    gated = block_loudness > -70.0

    def loudness_of(mask: torch.Tensor) -> torch.Tensor:
        mean_energy = (mask[:, None, :] * energies).sum(dim=-1) / mask.sum(dim=-1, keepdim=True)
        return -0.691 + 10 * torch.log10((weights * mean_energy).sum(dim=-1))

    relative = loudness_of(gated) - 10.0
    return loudness_of(gated & (block_loudness > relative[:, None]))


def integrated_loudness(audio: torch.Tensor, sample_rate: int, peaks: torch.Tensor) -> torch.Tensor:
    """BS.1770 loudness `[B]` in LUFS of `[B, C, N]` audio (NaN where undefined), clamp-safe.
    `peaks` `[B]`: each item's sample peak. Audio shorter than one 400 ms gating block (a drum
    hit) is measured as the one block that holds it, silence after it: the momentary loudness a
    meter shows when the hit plays alone."""
    gate = round(GATE_S * sample_rate)
    if audio.shape[-1] < gate:
        audio = torch.nn.functional.pad(audio, (0, gate - audio.shape[-1]))
    headroom = torch.where(peaks > LOUDNESS_PEAK_LIMIT, LOUDNESS_PEAK_LIMIT / peaks, torch.ones_like(peaks))
    loudness = gated_loudness(k_weighted_block_energies(audio * headroom[:, None, None], sample_rate))
    return loudness - 20.0 * torch.log10(headroom)


def _statistics(item: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """The numbers of one `[1, C, N]` item as a `[1, 10]` float64 row: snr, clipped, longest run,
    peak, power, dc, silent fraction, correlation, loudness, non-finite samples."""
    channels = item.shape[1]
    item = item.contiguous()  # the same memory layout whatever it was cut from
    finite_mask = torch.isfinite(item)
    non_finite = (~finite_mask).sum(dim=(1, 2))
    if bool(non_finite.any()):
        item = torch.where(finite_mask, item, torch.zeros_like(item))
    del finite_mask

    magnitude = item.abs()
    peaks = magnitude.amax(dim=(1, 2))
    clipped_mask = magnitude >= CLIP_THRESHOLD
    del magnitude
    clipped = clipped_mask.sum(dim=(1, 2))
    longest = longest_runs(clipped_mask) if bool(clipped.any()) else torch.zeros_like(clipped)
    del clipped_mask

    mean_power = item.square().mean(dim=(1, 2))
    dc = item.mean(dim=-1).abs().amax(dim=-1)
    powers = frame_powers(item, sample_rate)
    silent_fraction = (powers < 10.0 ** (SILENT_FRAME_DBFS / 10.0)).to(item.dtype).mean(dim=-1)
    floor = torch.quantile(powers, NOISE_FLOOR_QUANTILE, dim=-1)
    snr = torch.where(floor > 0, 10.0 * torch.log10(mean_power / floor), torch.full_like(floor, SNR_CAP_DB)).clamp(
        max=SNR_CAP_DB
    )
    snr = torch.where(mean_power > 0, snr, torch.full_like(snr, math.nan))
    correlation = stereo_correlation(item) if channels == 2 else torch.full_like(peaks, math.nan)
    if channels <= len(CHANNEL_WEIGHTS):
        loudness = integrated_loudness(item, sample_rate, peaks)
    else:
        loudness = torch.full_like(peaks, math.nan)
    columns = [snr, clipped, longest, peaks, mean_power, dc, silent_fraction, correlation, loudness, non_finite]
    return torch.stack([c.to(torch.float64) for c in columns], dim=1)


def measure_quality_batch(
    audio: torch.Tensor, sample_rate: int, frames: Sequence[int] | None = None
) -> list[QualityMetrics]:
    """QualityMetrics of each item of a `[B, C, N]` batch, item i over its first `frames[i]`
    samples (default: all N; a one-shot ends where its hit ends).

    Each item's statistics are computed on that item alone, in the shape it has alone: a
    reduction over a `[B, N]` tensor may add in another order than over `[1, N]` (it does on
    some processors), and a sidecar's numbers must not depend on the batch the item was made
    in. One transfer brings all the numbers back."""
    if audio.dim() != 3 or audio.shape[-1] == 0 or audio.shape[1] == 0:
        raise ValueError(f"audio has shape {tuple(audio.shape)}: expected [batch, channels, samples >= 1]")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate={sample_rate}: must be > 0")
    batch, channels, samples = audio.shape
    lengths = [samples] * batch if frames is None else [int(n) for n in frames]
    if len(lengths) != batch or not all(1 <= n <= samples for n in lengths):
        raise ValueError(f"frames={list(lengths)}: expected {batch} lengths in [1, {samples}]")
    if audio.dtype not in (torch.float32, torch.float64):
        audio = audio.float()
    rows = torch.cat([_statistics(audio[i : i + 1, :, :n], sample_rate) for i, n in enumerate(lengths)]).tolist()
    results = []
    for n, (snr_i, clipped_i, longest_i, peak_i, power_i, dc_i, silent_i, corr_i, lufs_i, bad_i) in zip(
        lengths, rows, strict=True
    ):
        values: dict[str, Any] = {
            "snr_db": snr_i,
            "clipped_samples": int(clipped_i),
            "clipped_percent": 100.0 * clipped_i / (channels * n),
            "longest_clip_run": int(longest_i),
            "peak_dbfs": 20.0 * math.log10(peak_i) if peak_i > 0 else -math.inf,
            "rms_dbfs": 10.0 * math.log10(power_i) if power_i > 0 else -math.inf,
            "dc_offset": dc_i,
            "silent_frame_fraction": silent_i,
            "lr_correlation": corr_i if channels == 2 else None,
            "loudness_lufs": lufs_i if math.isfinite(lufs_i) else None,
            "finite": bad_i == 0,
        }
        rating, reason = rate(values, int(bad_i))
        results.append(QualityMetrics(**values, rating=rating, rating_reason=reason))
    return results


def measure_quality(audio: torch.Tensor, sample_rate: int) -> QualityMetrics:
    """QualityMetrics of one `[C, N]` item."""
    if audio.dim() != 2:
        raise ValueError(f"audio has shape {tuple(audio.shape)}: expected [channels, samples]")
    return measure_quality_batch(audio[None], sample_rate)[0]
