"""How far two renders of the same output differ: the figures the determinism contract bounds.

Two renders of one seed and config on different devices (or with numerics not pinned) are equal
only up to rounding. Their difference is stated two ways:

- peak difference: max |a - b| over every sample and channel, in dBFS (-inf when identical);
  what a listener could at most hear added, as a level.
- log-spectral distance: for each STFT frame, the RMS over frequency bins of the level ratio
  10*log10(P_a / P_b) in dB, averaged over frames and channels (0 when identical); how far the
  sound's spectrum moved, independent of the waveform's phase.

Audio is `[..., samples]` (any leading shape, the same for both); computed in float64.
"""

from __future__ import annotations

import math

import torch

# STFT for the spectral distance: 2048-point Hann window (43 ms at 48 kHz), hop 512.
LSD_N_FFT = 2048
LSD_HOP = 512
# Bins more than this far below the louder render's loudest bin count as this level: the
# distance is about audible sound, not about rounding noise in silent bins (whose ratio is
# arbitrary).
LSD_FLOOR_DB = -120.0


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.shape != b.shape:
        raise ValueError(f"renders to compare must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.numel() == 0:
        raise ValueError("renders to compare are empty")
    return a.to(torch.float64), b.to(torch.float64)


def peak_difference_dbfs(a: torch.Tensor, b: torch.Tensor) -> float:
    """20*log10(max |a - b|) in dBFS; -inf when a and b are identical."""
    a, b = _check_pair(a, b)
    peak = (a - b).abs().max().item()
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf


def log_spectral_distance_db(
    a: torch.Tensor, b: torch.Tensor, n_fft: int = LSD_N_FFT, hop: int = LSD_HOP, floor_db: float = LSD_FLOOR_DB
) -> float:
    """Mean over frames (and channels) of the RMS over bins of 10*log10(P_a / P_b), in dB.

    Powers below `floor_db` relative to the louder signal's loudest bin are raised to that floor.
    Signals shorter than `n_fft` are zero-padded to one frame."""
    a, b = _check_pair(a, b)
    length = a.shape[-1]
    pair = torch.stack([a.reshape(-1, length), b.reshape(-1, length)])  # [2, rows, samples]
    if length < n_fft:
        pair = torch.nn.functional.pad(pair, (0, n_fft - length))
    window = torch.hann_window(n_fft, dtype=torch.float64, device=pair.device)
    spectra = torch.stft(pair.reshape(-1, pair.shape[-1]), n_fft, hop, window=window, center=False, return_complex=True)
    power = spectra.abs().square().reshape(2, -1, *spectra.shape[-2:])  # [2, rows, bins, frames]
    floor = power.max() * 10.0 ** (floor_db / 10.0)
    if floor == 0:  # both silent
        return 0.0
    level_db = 10.0 * torch.log10(power.clamp(min=floor))
    per_frame = (level_db[0] - level_db[1]).square().mean(dim=-2).sqrt()  # [rows, frames]
    return float(per_frame.mean())
