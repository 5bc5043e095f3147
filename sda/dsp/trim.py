"""Ending a one-shot when its sound ends: trailing silence trimmed, a short fade to zero.

Shapes: `[B, C, N]` -> (`[B, C, N]` with every sample past an item's new length set to 0,
lengths `[B]` int64). Everything is elementwise or a reduction within an item, so an item's
length and samples are the same in any batch.

The sound ends after the last sample whose magnitude (on any channel) exceeds the item's peak
times 10**(silence_db / 20); the item is then `fade` samples longer, and those last `fade`
samples fall to zero along a raised cosine (cos^2, its last value exactly 0). The fade runs
over audio already below the threshold, so it only removes what was inaudible, and the file's
last sample is 0: no click however it is played. An item limited by `max_frames` fades over its
last `fade` samples all the same.
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
    samples = audio.shape[-1]
    # argmax finds the first True of the reversed rows, i.e. the last loud sample.
    last = samples - 1 - above.flip(-1).to(torch.int8).argmax(dim=-1)
    return torch.where(above.any(dim=-1), last + 1, torch.zeros_like(last))


def trim_tail(
    audio: torch.Tensor, silence_db: float, fade: int, max_frames: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each item of `[B, C, N]` cut `fade` samples after its sound ends (at most `max_frames`,
    default N, and at least `fade`), its last `fade` samples faded to zero, zeros after.
    Returns (audio `[B, C, N]`, lengths `[B]` int64)."""
    samples = audio.shape[-1]
    limit = samples if max_frames is None else min(int(max_frames), samples)
    if fade < 1 or limit < 1:
        raise ValueError(f"fade={fade} and max_frames={limit}: both must be at least 1")
    fade = min(fade, limit)
    lengths = (sound_end(audio, silence_db) + fade).clamp(min=fade, max=limit)
    position = torch.arange(samples, device=audio.device)
    into_fade = position[None, :] - (lengths[:, None] - fade)  # [B, N]: < 0 before the fade
    curve = fade_out_curve(fade, str(audio.device), audio.dtype)
    gains = torch.where(
        into_fade < 0,
        torch.ones((), dtype=audio.dtype, device=audio.device),
        torch.where(into_fade < fade, curve[into_fade.clamp(0, fade - 1)], torch.zeros_like(curve[:1])),
    )
    return audio * gains[:, None, :], lengths
