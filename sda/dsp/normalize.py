"""Levels in dBFS and per-item gain: peak normalization, and a ceiling that only ever turns down.

Shapes: batches `[batch, channels, samples]` (any leading dims) -> gains `[batch]`. One gain per item
over all its channels, so stereo balance is kept.
"""

from __future__ import annotations

import math

import torch

# Every delivered file peaks here (sample peak, all channels): headroom for a DAW's mix bus.
OUTPUT_PEAK_DBFS = -1.0


def amplitude_to_dbfs(x: float | torch.Tensor) -> float | torch.Tensor:
    """20*log10(|x|): 1.0 is 0 dBFS, 0 is -inf dBFS. Floats in, float out; tensors in, tensor out."""
    if isinstance(x, torch.Tensor):
        return 20.0 * torch.log10(x.abs())
    return 20.0 * math.log10(abs(x)) if x != 0 else -math.inf


def dbfs_to_amplitude(db: float | torch.Tensor) -> float | torch.Tensor:
    """10**(db/20): -inf dBFS is 0. Floats in, float out; tensors in, tensor out."""
    if isinstance(db, torch.Tensor):
        return torch.pow(10.0, db / 20.0)
    return 10.0 ** (db / 20.0)


def _check_level(name: str, dbfs: float) -> None:
    if not (math.isfinite(dbfs) and dbfs <= 0.0):
        raise ValueError(f"{name}={dbfs}: must be a finite level <= 0 dBFS")


def _item_peaks(audio: torch.Tensor) -> torch.Tensor:
    if audio.dim() < 2:
        raise ValueError(f"audio has shape {tuple(audio.shape)}: expected [batch, channels, samples]")
    if audio.shape[-1] == 0:
        return torch.zeros(audio.shape[:-2], dtype=audio.dtype, device=audio.device)
    return audio.abs().amax(dim=(-2, -1))


def peak_normalize(audio: torch.Tensor, target_dbfs: float = -1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale each item of `[B, C, N]` so its peak over all channels is `target_dbfs`.

    Returns (audio, gains `[B]`). Items that are silent or hold a non-finite sample are returned
    unchanged with gain 1 (the quality check reports those).
    """
    _check_level("target_dbfs", target_dbfs)
    peaks = _item_peaks(audio)
    target = torch.tensor(dbfs_to_amplitude(target_dbfs), dtype=audio.dtype, device=audio.device)
    usable = torch.isfinite(peaks) & (peaks > 0)
    gains = torch.where(usable, target / torch.where(usable, peaks, torch.ones_like(peaks)), torch.ones_like(peaks))
    return audio * gains[..., None, None], gains


def enforce_ceiling(audio: torch.Tensor, ceiling_dbfs: float = -1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale down only the items of `[B, C, N]` whose peak exceeds `ceiling_dbfs`; never boosts.

    Returns (audio, gains `[B]`, 1 where untouched). Afterwards no sample exceeds the ceiling as
    represented in the audio dtype: the gain is rounded down by one ulp, so the rounded product
    cannot land above it. Items holding a non-finite sample are left alone, gain 1.
    """
    _check_level("ceiling_dbfs", ceiling_dbfs)
    peaks = _item_peaks(audio)
    ceiling = torch.tensor(dbfs_to_amplitude(ceiling_dbfs), dtype=audio.dtype, device=audio.device)
    over = torch.isfinite(peaks) & (peaks > ceiling)
    safe_peaks = torch.where(over, peaks, torch.ones_like(peaks))
    lowered = torch.nextafter(ceiling / safe_peaks, torch.zeros_like(safe_peaks))
    gains = torch.where(over, lowered, torch.ones_like(peaks))
    return audio * gains[..., None, None], gains
