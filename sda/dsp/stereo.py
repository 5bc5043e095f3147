"""Stereo from mono: Haas delay plus mid/side width, joining two independently generated channels,
and the left/right correlation used to judge mono compatibility.

Shapes: mono batches `[batch, 1, samples]` -> stereo `[batch, 2, samples]` (any leading dims work).
"""

from __future__ import annotations

import torch

MAX_WIDTH = 1.5


def _check_mono(audio: torch.Tensor, name: str) -> None:
    if audio.dim() < 2 or audio.shape[-2] != 1:
        raise ValueError(f"{name} has shape {tuple(audio.shape)}: expected [batch, 1, samples]")


def haas_delay_samples(sample_rate: int, haas_ms: float) -> int:
    """The Haas delay rounded to whole samples."""
    return round(haas_ms * sample_rate / 1000.0)


def mid_side_widen(mono: torch.Tensor, sample_rate: int, width: float, haas_ms: float = 12.0) -> torch.Tensor:
    """Stereo `[B, 2, N]` from mono `[B, 1, N]`: L = x, R = x delayed by `haas_ms` (rounded to whole
    samples, zero-filled at the start, length kept), then the side signal (L-R)/2 scaled by `width`.

    width 0 gives two identical channels (the mid, (x + delayed x)/2, so a comb-filtered mono);
    width 1 gives exactly (x, delayed x); width 1.5 exaggerates the difference.
    """
    _check_mono(mono, "mono")
    if not 0.0 <= width <= MAX_WIDTH:
        raise ValueError(f"width={width}: must be in [0, {MAX_WIDTH}]")
    if not haas_ms >= 0.0:
        raise ValueError(f"haas_ms={haas_ms}: must be >= 0")
    samples = mono.shape[-1]
    delay = min(haas_delay_samples(sample_rate, haas_ms), samples)
    left = mono
    right = torch.nn.functional.pad(mono, (delay, 0))[..., :samples]
    # M +- width*S written as a 2x2 mix, so width 1 and width 0 come out exact rather than
    # exact-up-to-rounding of (L+R)/2 + (L-R)/2.
    own = (1.0 + width) / 2.0
    other = (1.0 - width) / 2.0
    return torch.cat([own * left + other * right, other * left + own * right], dim=-2)


def join_dual_seed(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Stereo `[B, 2, N]` from two mono renders `[B, 1, N]` of the same shape."""
    _check_mono(left, "left")
    _check_mono(right, "right")
    if left.shape != right.shape:
        raise ValueError(f"left {tuple(left.shape)} and right {tuple(right.shape)}: shapes must match")
    return torch.cat([left, right], dim=-2)


def lr_correlation(audio: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of the two channels of `[..., 2, N]` audio -> `[...]`, in [-1, 1].

    0 where either channel is constant (silence included): there is no correlation to speak of.
    """
    if audio.dim() < 2 or audio.shape[-2] != 2:
        raise ValueError(f"audio has shape {tuple(audio.shape)}: expected [..., 2, samples]")
    centred = audio - audio.mean(dim=-1, keepdim=True)
    left, right = centred[..., 0, :], centred[..., 1, :]
    covariance = (left * right).sum(dim=-1)
    scale = torch.sqrt((left * left).sum(dim=-1) * (right * right).sum(dim=-1))
    defined = scale > torch.finfo(scale.dtype).tiny
    correlation = covariance / torch.where(defined, scale, torch.ones_like(scale))
    return torch.where(defined, correlation, torch.zeros_like(correlation)).clamp(-1.0, 1.0)
