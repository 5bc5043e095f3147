"""The finishing chain: mono voices at the internal rate in, delivered audio out.

    anti-alias -> stereo -> peak normalise -> resample (once, to the output rate)
    -> peak normalise again -> ceiling -> exact length

Shapes: voices `[V, 1, samples]` at `sample_rate` (V = items, or 2 x items for dual_seed with
the left voices first) -> audio `[items, channels, frames]` at `output_sample_rate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sda.dsp.filters import anti_alias
from sda.dsp.normalize import OUTPUT_PEAK_DBFS, enforce_ceiling, peak_normalize
from sda.dsp.resample import resample
from sda.dsp.stereo import join_dual_seed, mid_side_widen

STEREO_MODES = ("mono", "mid_side", "dual_seed")


@dataclass(frozen=True)
class FinishSettings:
    """What the chain does after phase reconstruction."""

    stereo: str = "mono"  # one of STEREO_MODES
    width: float = 1.0  # mid_side only
    haas_ms: float = 12.0  # mid_side only
    output_sample_rate: int = 48000
    peak_dbfs: float = OUTPUT_PEAK_DBFS

    def __post_init__(self) -> None:
        if self.stereo not in STEREO_MODES:
            raise ValueError(f"stereo={self.stereo!r}: allowed {', '.join(STEREO_MODES)}")


def finish(voices: torch.Tensor, sample_rate: int, settings: FinishSettings, frames: int) -> torch.Tensor:
    """Delivered audio `[items, channels, frames]`, peaking at exactly `settings.peak_dbfs`."""
    if voices.dim() != 3 or voices.shape[1] != 1:
        raise ValueError(f"voices has shape {tuple(voices.shape)}: expected [voices, 1, samples]")
    voices = anti_alias(voices, sample_rate)
    if settings.stereo == "dual_seed":
        if voices.shape[0] % 2:
            raise ValueError(f"dual_seed needs a left and a right voice per item; got {voices.shape[0]} voices")
        items = voices.shape[0] // 2
        audio = join_dual_seed(voices[:items], voices[items:])
    elif settings.stereo == "mid_side":
        audio = mid_side_widen(voices, sample_rate, settings.width, settings.haas_ms)
    else:
        audio = voices
    audio, _ = peak_normalize(audio, settings.peak_dbfs)
    audio = resample(audio, sample_rate, settings.output_sample_rate)
    # A peak between the new rate's samples reads lower (or higher) after resampling: normalise
    # again at the output rate so every file peaks at exactly the target.
    audio, _ = peak_normalize(audio, settings.peak_dbfs)
    # The float32 product can round one step above the ceiling: never let it.
    audio, _ = enforce_ceiling(audio, settings.peak_dbfs)
    if audio.shape[-1] < frames:
        raise RuntimeError(f"generated {audio.shape[-1]} frames, fewer than the {frames} needed")
    return audio[..., :frames]
