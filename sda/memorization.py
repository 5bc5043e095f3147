"""The memorization check of every output: how near it lies to the audio its model was trained on.

The measure is sda.novelty's, the one sda.evaluate reports: the fingerprint distance (dB) between
1 s windows, and the nearest training window's file and start. Two references, both kept in the
checkpoint (format 2, sda.training_summary), each output compared with each:

- the training audio itself (`training_audio`): the output's 1 s windows against the training
  files' windows. This is sda.evaluate's nearest-training-window figure, and it finds playback
  (a copy lies within 0.35 dB of its source, shifted or at another level).
- the model's own rendition of every training window (`model_rendition`): the output's 1 s
  windows, and each window the model decoded for it (crossfade chunking: before the joins),
  against the training windows as the model renders them. A model replaying what it remembers
  makes a blurred copy a few dB from the recording, where no threshold can tell it from new
  sound; against its own rendition the replay lies within a hundredth of a dB (the shipped
  model's source=corpus replays: 1.0 to 6.2 dB from the recordings, at most 0.004 dB from the
  renditions; its prior renders 1.7 dB or more from both; 40 seeds of 3 s).

The output's `distance_db` is the nearer of the two. A format-1 checkpoint keeps neither: the
check is then "unavailable" (the output is still made).

The verdict (`quality.*` of GenerationConfig): an output nearer than `quality.min_novelty` dB is
rated red, "near copy of FILE at T s". The default, sda.novelty.NEAR_COPY_DB (0.4 dB), lies
between playback or replay and the nearest other takes of a sound (1 dB or more).

With `quality.reject_copies=true` a near copy is recorded as "rejected" with that reason instead
of "done". Its audio and sidecar are still written: the render is deterministic and already paid
for, a threshold can be too strict and the user may want to hear what it caught, and a rejected
output that was never written would be made again by every resume. The sidecar records the
distance, so a later run into the same folder judges it again under its own settings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from sda.config import QualityConfig
from sda.dsp.quality import QualityMetrics
from sda.dsp.resample import resample
from sda.novelty import SAMPLE_RATE as NOVELTY_SAMPLE_RATE
from sda.novelty import NearestWindow, nearest_in_each
from sda.training_summary import TrainingSummary

CHECKED = "checked"
TRAINING_AUDIO = "training_audio"
RENDITION = "model_rendition"
UNAVAILABLE = "unavailable"
NO_WINDOW = "no_window"


@dataclass(frozen=True)
class MemorizationCheck:
    """One output's check: `status` is CHECKED (with `training_audio` and `model_rendition`, the
    nearest window of each reference), UNAVAILABLE (the checkpoint keeps no references; `reason`
    says why) or NO_WINDOW (no 1 s window of the output above -60 dBFS)."""

    status: str
    training_audio: NearestWindow | None
    model_rendition: NearestWindow | None
    min_novelty_db: float
    reject_copies: bool
    reason: str = ""

    @property
    def nearest(self) -> NearestWindow | None:
        """The nearer of the two references' nearest windows."""
        found = [n for n in (self.training_audio, self.model_rendition) if n is not None]
        return min(found, key=lambda n: n.distance_db) if found else None

    @property
    def near_copy(self) -> bool:
        nearest = self.nearest
        return nearest is not None and nearest.distance_db < self.min_novelty_db

    @property
    def rejected(self) -> bool:
        return self.near_copy and self.reject_copies

    @property
    def verdict(self) -> str:
        """Why the output is red (empty when it is not a near copy)."""
        nearest = self.nearest
        if nearest is None or not self.near_copy:
            return ""
        return near_copy_text(nearest.file, nearest.start_s, nearest.distance_db, self.min_novelty_db)

    def to_dict(self) -> dict[str, Any]:
        """The sidecar's `memorization` record."""
        nearest = self.nearest
        return {
            "status": self.status,
            "reason": self.reason,
            "distance_db": nearest.distance_db if nearest is not None else None,
            "file": nearest.file if nearest is not None else None,
            "start_s": nearest.start_s if nearest is not None else None,
            "output_start_s": nearest.clip_start_s if nearest is not None else None,
            "reference": None if nearest is None else TRAINING_AUDIO if nearest is self.training_audio else RENDITION,
            TRAINING_AUDIO: _window_record(self.training_audio),
            RENDITION: _window_record(self.model_rendition),
            "min_novelty_db": self.min_novelty_db,
            "near_copy": self.near_copy,
            "reject_copies": self.reject_copies,
            "rejected": self.rejected,
            "verdict": self.verdict,
        }


def _window_record(found: NearestWindow | None) -> dict[str, Any] | None:
    if found is None:
        return None
    return {
        "distance_db": found.distance_db,
        "file": found.file,
        "start_s": found.start_s,
        "output_start_s": found.clip_start_s,
    }


def near_copy_text(file: str, start_s: float, distance_db: float, min_novelty_db: float) -> str:
    return (
        f"near copy of {file} at {start_s:.2f} s ({distance_db:.2f} dB from it; "
        f"quality.min_novelty={min_novelty_db:g} dB)"
    )


def unavailable_reason(summary: TrainingSummary | None) -> str:
    if summary is None:
        return "the model's checkpoint keeps no summary of its training windows (format 1, or saved without one)"
    return summary.novelty_unavailable


def check_output(
    summary: TrainingSummary | None,
    audio: np.ndarray,
    sample_rate: int,
    quality: QualityConfig,
    window_prints: torch.Tensor | None = None,
    window_starts_s: torch.Tensor | None = None,
) -> MemorizationCheck:
    """The check of one output, `audio` `[channels, frames]` at `sample_rate` (mixed to mono and
    brought to sda.novelty's rate first). `window_prints` `[W, FINGERPRINT_DIMS]`: the
    fingerprints of the windows the model decoded for it, starting at `window_starts_s` `[W]` in
    the output, when its chunking mode has such windows."""
    if summary is None or summary.novelty is None or summary.renditions is None:
        return MemorizationCheck(
            UNAVAILABLE, None, None, quality.min_novelty, quality.reject_copies, unavailable_reason(summary)
        )
    mono = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).mean(dim=0)
    at_rate = resample(mono, sample_rate, NOVELTY_SAMPLE_RATE)
    training_audio, rendition = nearest_in_each([summary.novelty, summary.renditions], at_rate)
    if window_prints is not None and window_prints.shape[0] and window_starts_s is not None:
        decoded = summary.renditions.nearest_among(window_prints, window_starts_s)
        if rendition is None or decoded.distance_db < rendition.distance_db:
            rendition = decoded
    if training_audio is None and rendition is None:
        reason = "no 1 s window of the output is above the silence threshold"
        return MemorizationCheck(NO_WINDOW, None, None, quality.min_novelty, quality.reject_copies, reason)
    return MemorizationCheck(CHECKED, training_audio, rendition, quality.min_novelty, quality.reject_copies)


def rated(metrics: QualityMetrics, check: MemorizationCheck) -> QualityMetrics:
    """`metrics` rated red with the check's verdict when the output is a near copy (a reason it
    was red for already follows the verdict)."""
    if not check.near_copy:
        return metrics
    reason = check.verdict + (f"; {metrics.rating_reason}" if metrics.rating == "red" else "")
    return replace(metrics, rating="red", rating_reason=reason)


def recorded_rejection(record: dict[str, Any], quality: QualityConfig) -> str | None:
    """For an output already on disk: the reason it is rejected under `quality`, judged from the
    distance its sidecar records; None when it is not (or the sidecar records no distance)."""
    memorization = record.get("memorization")
    if not quality.reject_copies or not isinstance(memorization, dict):
        return None
    distance, file, start = memorization.get("distance_db"), memorization.get("file"), memorization.get("start_s")
    if not _is_number(distance) or distance >= quality.min_novelty:
        return None
    return near_copy_text(
        str(file), float(start) if _is_number(start) else float("nan"), float(distance), quality.min_novelty
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
