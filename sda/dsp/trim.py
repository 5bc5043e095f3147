"""Ending a one-shot when its sound ends: trailing silence trimmed, a short fade to zero.

Shapes: `[B, C, N]` -> (`[B, C, N]` with every sample past an item's new length set to 0,
lengths `[B]` int64). Everything is elementwise or a reduction within an item, so an item's
length and samples are the same in any batch.

The sound ends after the last sample whose magnitude (on any channel) exceeds the item's peak
times 10**(silence_db / 20). Then `fade` samples fall to zero along a raised cosine (cos^2, its
last value exactly 0), over audio already below the threshold, so the fade only removes what was
inaudible; then `silence` samples of digital silence end the item, so its end is silent whatever
a model left in its tail and a sampler that plays it through never meets a step: no click. An
item that never falls below the threshold (a model's noise floor, a sustained sound) is cut at
`max_frames` and fades and ends in silence all the same.
"""

from __future__ import annotations

import functools
import math

import torch


@functools.lru_cache(maxsize=16)
def fade_out_curve(fade: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    """`[fade]` gains falling from just under 1 to exactly 0: cos^2(pi/2 * (k + 1) / fade).
    Cached: do not modify in place."""
    k = torch.arange(1, fade + 1, dtype=torch.float64)
    curve = torch.cos(math.pi / 2 * k / fade) ** 2
    curve[-1] = 0.0  # cos(pi/2) is 6e-17 in floating point, not 0
    return curve.to(device=device, dtype=dtype)


def sound_end(audio: torch.Tensor, silence_db: float) -> torch.Tensor:
    """`[B]` int64: one past the last sample of each item of `[B, C, N]` above its peak times
    10**(silence_db / 20); 0 for a silent item."""
    if audio.dim() != 3:
        raise ValueError(f"audio has shape {tuple(audio.shape)}: expected [batch, channels, samples]")
    magnitude = audio.abs().amax(dim=1)  # [B, N]
    peaks = magnitude.amax(dim=-1, keepdim=True)
    above = magnitude > peaks * 10.0 ** (silence_db / 20.0)
    position = torch.arange(audio.shape[-1], device=audio.device)
    last = torch.where(above, position, torch.full_like(position, -1)).amax(dim=-1)  # -1: none
    return last + 1


def trim_tail(
    audio: torch.Tensor, silence_db: float, fade: int, silence: int = 0, max_frames: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each item of `[B, C, N]` ends `fade + silence` samples after its sound does (at most
    `max_frames`, default N): its `fade` samples before the last `silence` faded to zero, zeros
    from there on. Returns (audio `[B, C, N]`, lengths `[B]` int64)."""
    samples = audio.shape[-1]
    limit = samples if max_frames is None else min(int(max_frames), samples)
    if fade < 1 or silence < 0 or limit < 1:
        raise ValueError(f"fade={fade}, silence={silence}, max_frames={limit}: need fade, frames >= 1, silence >= 0")
    silence = min(silence, limit - 1)
    fade = min(fade, limit - silence)
    lengths = (sound_end(audio, silence_db) + fade + silence).clamp(min=fade + silence, max=limit)
    position = torch.arange(samples, device=audio.device)
    into_fade = position[None, :] - (lengths[:, None] - silence - fade)  # [B, N]: < 0 before the fade
    curve = fade_out_curve(fade, str(audio.device), audio.dtype)
    gains = torch.where(
        into_fade < 0,
        torch.ones((), dtype=audio.dtype, device=audio.device),
        torch.where(into_fade < fade, curve[into_fade.clamp(0, fade - 1)], torch.zeros_like(curve[:1])),
    )
    return audio * gains[:, None, :], lengths
