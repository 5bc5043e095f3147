"""The finishing chain: mono voices at the internal rate in, delivered audio out.

    anti-alias -> stereo -> peak normalize -> resample (once, to the output rate)
    -> [one-shots: trim the silent tail, fade to zero] -> level -> ceiling -> exact length

The level is set by `normalize`: "peak" puts every item's sample peak at `peak_dbfs` (the chain
as it always was: a peak normalization again at the output rate, then the ceiling); "loudness"
puts its BS.1770 integrated loudness at `loudness_lufs` with its true peak at most
`true_peak_dbtp` (sda.dsp.loudness), and returns what it did to each item (its gain, and by how
many LU an item held back by that ceiling stayed short).

Shapes: voices `[V, 1, samples]` at `sample_rate` (V = items, or 2 x items for dual_seed with
the left voices first) -> `Finished.audio` `[items, channels, frames]` at `output_sample_rate`.
Every item is `frames` long except one-shots, whose lengths are their own (`Finished.frames`;
the audio past an item's length is zero). Level and length are decided item by item, so an
item's audio is the same in any batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sda.dsp.filters import anti_alias
from sda.dsp.loudness import Levels, LoudnessNormalization, normalize_loudness
from sda.dsp.normalize import OUTPUT_PEAK_DBFS, enforce_ceiling, peak_normalize
from sda.dsp.resample import resample
from sda.dsp.stereo import join_dual_seed, mid_side_widen
from sda.dsp.trim import trim_tail

# A one-shot ends with this much digital silence after its fade (see sda.dsp.trim).
ONESHOT_END_SILENCE_MS = 5.0

STEREO_MODES = ("mono", "mid_side", "dual_seed")
NORMALIZE_MODES = ("peak", "loudness")


@dataclass(frozen=True)
class OneshotEnd:
    """How a one-shot ends (sda.dsp.trim): trailing audio below `silence_db` re its peak is cut,
    `fade_ms` fade to zero, and `end_silence_ms` of silence close it."""

    silence_db: float = -60.0
    fade_ms: float = 10.0
    end_silence_ms: float = ONESHOT_END_SILENCE_MS


@dataclass(frozen=True)
class FinishSettings:
    """What the chain does after phase reconstruction."""

    stereo: str = "mono"  # one of STEREO_MODES
    width: float = 1.0  # mid_side only
    haas_ms: float = 12.0  # mid_side only
    output_sample_rate: int = 48000
    peak_dbfs: float = OUTPUT_PEAK_DBFS
    normalize: str = "peak"  # one of NORMALIZE_MODES
    loudness_lufs: float = -23.0  # normalize="loudness" only
    true_peak_dbtp: float = -1.0  # normalize="loudness" only
    oneshot: OneshotEnd | None = None  # one-shots end when their sound does

    def __post_init__(self) -> None:
        if self.stereo not in STEREO_MODES:
            raise ValueError(f"stereo={self.stereo!r}: allowed {', '.join(STEREO_MODES)}")
        if self.normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize={self.normalize!r}: allowed {', '.join(NORMALIZE_MODES)}")


@dataclass(frozen=True)
class ItemLevel:
    """One delivered item's level: its measured loudness and true peak, and, under
    normalize="loudness", what the normalization did (None under "peak")."""

    levels: Levels
    loudness: LoudnessNormalization | None = None

    def to_dict(self) -> dict[str, float | bool | None]:
        """Plain data: `integrated_lufs`, `true_peak_dbtp`, and under loudness normalization
        `gain_db`, `shortfall_lu` and `reached` (False when the true-peak ceiling held it back)."""
        data: dict[str, float | bool | None] = {
            "integrated_lufs": self.levels.integrated_lufs,
            "true_peak_dbtp": self.levels.true_peak_dbtp,
        }
        if self.loudness is not None:
            shortfall = self.loudness.shortfall_lu
            data["gain_db"] = self.loudness.gain_db
            data["shortfall_lu"] = shortfall
            data["reached"] = None if shortfall is None else not self.loudness.limited_by_true_peak
        return data


@dataclass(frozen=True)
class Finished:
    """The chain's output: `audio` `[items, channels, max(frames)]`, each item's length in
    `frames`, and, under normalize="loudness", what the normalization did to each item."""

    audio: torch.Tensor
    frames: list[int]
    loudness: list[LoudnessNormalization | None] = field(default_factory=list)

    def item(self, index: int) -> torch.Tensor:
        """Item `index` `[channels, frames]`, its own length."""
        return self.audio[index, :, : self.frames[index]]


def finish(voices: torch.Tensor, sample_rate: int, settings: FinishSettings, frames: int) -> Finished:
    """Delivered audio: `frames` frames per item (one-shots: their own length, at most `frames`),
    levelled by `settings.normalize`."""
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
    # A peak between the new rate's samples reads lower (or higher) after resampling: normalize
    # again at the output rate so every file peaks at exactly the target.
    audio, _ = peak_normalize(audio, settings.peak_dbfs)
    if audio.shape[-1] < frames:
        raise RuntimeError(f"generated {audio.shape[-1]} frames, fewer than the {frames} needed")
    lengths = [frames] * audio.shape[0]
    if settings.oneshot is not None:
        end = settings.oneshot
        fade = max(1, round(end.fade_ms * settings.output_sample_rate / 1000))
        silence = round(end.end_silence_ms * settings.output_sample_rate / 1000)
        audio, trimmed = trim_tail(audio[..., :frames], end.silence_db, fade, silence)
        lengths = [int(n) for n in trimmed.tolist()]
        audio = audio[..., : max(lengths, default=frames)]
        if settings.normalize == "peak":
            audio, _ = peak_normalize(audio, settings.peak_dbfs)  # a fade cut short may have lowered a peak
    if settings.normalize == "loudness":
        return _loudness_levelled(audio[..., : max(lengths, default=frames)], lengths, settings)
    # The float32 product can round one step above the ceiling: never let it.
    audio, _ = enforce_ceiling(audio, settings.peak_dbfs)
    return Finished(audio[..., : max(lengths, default=frames)], lengths, [None] * len(lengths))


def _loudness_levelled(audio: torch.Tensor, lengths: list[int], settings: FinishSettings) -> Finished:
    """Each item at its loudness target under the true-peak ceiling, measured on its own frames."""
    items, done = [], []
    for i, n in enumerate(lengths):
        item, normalization = normalize_loudness(
            audio[i, :, :n], settings.output_sample_rate, settings.loudness_lufs, settings.true_peak_dbtp
        )
        items.append(torch.nn.functional.pad(item, (0, audio.shape[-1] - n)))
        done.append(normalization)
    levelled = torch.stack(items) if items else audio
    # The true peak is at or under the ceiling, so the sample peak is too; this only catches an
    # ulp of float32 rounding.
    levelled, _ = enforce_ceiling(levelled, settings.true_peak_dbtp)
    return Finished(levelled, lengths, done)
