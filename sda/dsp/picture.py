"""The levels of the report's spectrogram pictures, computed for a whole batch where its audio is.

A picture is `[height, width]` levels in dB relative to a full-scale sine, top row the highest
frequency: frames of `picture_n_fft` samples (Hann) at half-frame hops, or closer when there are
fewer than `width` of them, over the first `max_s` seconds; each column is the mean power of its
frames, each row the strongest bin of its log-spaced band from `f_min_hz` to Nyquist (a band
narrower than a bin takes the bin it lies in). sda.report draws the same levels from a file
(numpy, `spectrogram_levels_db`); this is the batched torch version the pipeline runs on the
device, equal to it within float32 rounding.

Shapes: audio `[batch, samples]` -> levels `[batch, height, width]`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

# Floor added to a band's power before the logarithm (a silent band reads -200 dB, not -inf).
POWER_FLOOR = 1e-20
# Samples framed at once per chunk of items (the frames overlap by half: about twice the audio,
# as float32 and again as complex64), so a batch of long files never frames everything at once.
FRAMED_SAMPLES_PER_CHUNK = 1 << 25


@dataclass(frozen=True)
class PictureSettings:
    """What a spectrogram picture shows: `width` x `height` levels over the first `max_s`
    seconds, from `f_min_hz` to Nyquist."""

    width: int
    height: int
    max_s: float
    f_min_hz: float


def picture_n_fft(sample_rate: int) -> int:
    """About 43 ms: 2048 at 44.1 and 48 kHz, 4096 at 96 kHz."""
    return 1 << max(8, round(math.log2(sample_rate * 0.0427)))


def picture_row_edges_hz(sample_rate: int, height: int, f_min_hz: float) -> np.ndarray:
    """`height + 1` band edges, log-spaced from `f_min_hz` to Nyquist, lowest first."""
    return np.geomspace(f_min_hz, sample_rate / 2, height + 1)


def picture_window(n_fft: int) -> np.ndarray:
    """The periodic Hann window of the frames, float32."""
    return np.hanning(n_fft + 1)[:-1].astype(np.float32)


def frame_starts(samples: int, n_fft: int, width: int) -> np.ndarray:
    """First sample of every frame of a signal of `samples` (>= n_fft) samples."""
    span = samples - n_fft
    n_frames = max(width, span // (n_fft // 2) + 1)
    return np.linspace(0, span, n_frames).round().astype(np.int64)


def column_bounds(n_frames: int, width: int) -> np.ndarray:
    """First frame of every column."""
    return np.floor(np.arange(width) * n_frames / width).astype(np.int64)


def band_bins(sample_rate: int, n_fft: int, height: int, f_min_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """(first bin, end bin) of each band, lowest band first."""
    bins = n_fft // 2 + 1
    bin_hz = sample_rate / n_fft
    edges = picture_row_edges_hz(sample_rate, height, f_min_hz)
    low = np.minimum(np.floor(edges[:-1] / bin_hz + 0.5).astype(np.int64), bins - 1)
    high = np.maximum(np.floor(edges[1:] / bin_hz + 0.5).astype(np.int64), low + 1)
    return low, high


def full_scale_power(window: np.ndarray) -> float:
    """The bin power of a full-scale sine through `window`."""
    return float((window.sum() / 2) ** 2)


@functools.lru_cache(maxsize=8)
def _frame_layout(
    samples: int, sample_rate: int, picture: PictureSettings, device: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(first sample of every frame `[n_frames]`, window, column of each frame, frames per column),
    on `device`; built once per length (every item of a run has the same)."""
    n_fft = picture_n_fft(sample_rate)
    starts = frame_starts(samples, n_fft, picture.width)
    per_column = np.diff(np.append(column_bounds(len(starts), picture.width), len(starts)))
    return (
        torch.from_numpy(starts).to(device),
        torch.from_numpy(picture_window(n_fft)).to(device),
        torch.from_numpy(np.repeat(np.arange(picture.width), per_column)).to(device),
        torch.from_numpy(per_column).to(device, torch.float32),
    )


def spectrogram_levels_batch(audio: torch.Tensor, sample_rate: int, picture: PictureSettings) -> torch.Tensor:
    """Levels `[batch, height, width]` (float32, on the audio's device) of each item of `[batch,
    samples]` audio: see the module docstring."""
    if audio.dim() != 2:
        raise ValueError(f"audio has shape {tuple(audio.shape)}: expected [batch, samples]")
    n_fft = picture_n_fft(sample_rate)
    signal = audio[:, : round(picture.max_s * sample_rate)].float()
    if signal.shape[-1] < n_fft:
        signal = torch.nn.functional.pad(signal, (0, n_fft - signal.shape[-1]))
    device = signal.device
    starts, window, owner, counts = _frame_layout(signal.shape[-1], sample_rate, picture, str(device))
    n_frames = starts.shape[0]
    low, high = band_bins(sample_rate, n_fft, picture.height, picture.f_min_hz)
    full_scale = full_scale_power(picture_window(n_fft))
    per_chunk = max(1, FRAMED_SAMPLES_PER_CHUNK // (n_frames * n_fft))
    pictures = []
    for item in range(0, signal.shape[0], per_chunk):
        # Every window of n_fft samples is a view (unfold); the frames are the rows picked from it
        # (a fifth of the time of gathering every sample by its own index, on the 2-core CPU).
        frames = signal[item : item + per_chunk].unfold(-1, n_fft, 1)[:, starts] * window  # [items, n_frames, n_fft]
        power = torch.fft.rfft(frames, dim=-1).abs().square()  # [items, n_frames, bins]
        del frames
        summed = torch.zeros(power.shape[0], picture.width, power.shape[-1], device=device, dtype=power.dtype)
        columns = summed.index_add_(1, owner, power) / counts[:, None]  # [items, width, bins]
        del power
        bands = torch.stack([columns[..., lo:hi].amax(dim=-1) for lo, hi in zip(low, high, strict=True)], dim=1)
        pictures.append(10 * torch.log10(bands.flip(1) / full_scale + POWER_FLOOR))
    return torch.cat(pictures)
