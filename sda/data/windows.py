"""Training windows: the train/validation split, which windows hold sound, and an augmenting sampler.

A window is `window_samples` of mono audio; batches are float32 tensors `[batch, window_samples]`.
Windows sit on a grid `hop_samples` apart in each clip; those whose RMS is at or below
`silence_dbfs` (0 dBFS = RMS of 1.0) are dropped, so a recording's quiet tails don't teach the
model silence.

A clip shorter than a window (a one-shot: a drum hit, a pluck) is one window: placed at the
window's start, so its attack sits where the model expects a sound to begin, and padded with
silence. Its level is that of its loudest 50 ms (`SOUND_FRAME_S`), not its mean over the window
or over its own length: a hit is not silent because its tail is, and a quiet brush whose decay
drags its mean level down still trains.

Augmentation, for datasets of a few minutes where every window is seen hundreds of times:

- Start jitter. Each epoch a window starts anywhere within ±hop/2 of its grid position (clamped
  to the clip). Without it the model sees the same few hundred frames-to-window alignments every
  epoch and memorizes them; with it every epoch brings new alignments at no cost in realism.
- Random gain, uniform in ±`gain_db`. The model's input is log1p(mel magnitude), which is close
  to linear for quiet bins and logarithmic for loud ones, so a level change changes the *shape*
  of the input, not just an offset. Recordings arrive at arbitrary levels; gain teaches the model
  that level is not timbre, and generated textures then hold up at any playback gain. Values may
  exceed 1.0 after a boost; nothing clips them.
- Varispeed: with probability `p_varispeed` a window is taken from a segment slightly longer
  (pitch up) or shorter (pitch down) than the window, centred on the same place, and resampled to
  the window length, as a tape played faster or slower. Pitch, spectral envelope and tempo move
  together, which natural sources do too (a smaller bell, a faster rain), so it multiplies the
  data without inventing sounds a phase vocoder's smearing would. The step is drawn from
  `semitone_steps`; each step's speed ratio is the simplest fraction within 2 cents of the
  semitone ratio (+2 st is 37/33; 9/8 would be 4 cents sharp), so each step needs one short
  cached sinc kernel (`sda.dsp.resample.get_resampler`; about 190 taps), applied once per batch
  to all the windows drawn with that step.

All randomness of an epoch comes from the `torch.Generator` passed in, drawn on the CPU before
the first batch, so an epoch is the same on any machine for the same generator state.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from sda.data.folder import AudioClip, printable
from sda.dsp.resample import get_resampler
from sda.errors import ConfigError
from sda.schema import Sealed, check_range

log = logging.getLogger(__name__)

# Speed ratios are the simplest fractions (terms up to this) within VARISPEED_MAX_ERROR_CENTS of
# 2**(step/12): small terms keep each kernel short (its length grows with the numerator).
VARISPEED_MAX_TERM = 64
VARISPEED_MAX_ERROR_CENTS = 2.0
SINGLE_CLIP_MIN_VALIDATION_S = 1.0
# A clip shorter than a window holds sound when its loudest stretch of this length does.
SOUND_FRAME_S = 0.05
# Augmented windows are made this many samples (whole batches, at least one) at a time: 64 MiB.
CHUNK_SAMPLES = 1 << 24


# ---------------------------------------------------------------------------------------------
# Train/validation split


def split_by_file(
    clips: list[AudioClip], validation_fraction: float, seed: int, sample_rate: int = 48000
) -> tuple[list[AudioClip], list[AudioClip]]:
    """(training clips, validation clips), whole files apart, each list in the input order.

    Rule: round(n * validation_fraction) files, at least 1 and at most n - 1, go to validation.
    Which ones is decided by ranking the files on sha256(seed, relative path), so the split
    depends only on the seed and the names (not on library versions), and adding a file leaves
    the others where they were.

    A single clip is split in time instead: its last `validation_fraction` (at least 1 s, and
    always leaving 1 s for training) validates, the rest trains. That validation is not
    independent of training, and a warning says so. A single clip shorter than 2 s is not split
    (cutting a one-shot would cut its hit from its tail): it trains and validates whole.
    `sample_rate` is the clips' rate; it only matters for that single-clip rule.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction={validation_fraction!r}: must be in (0, 1)")
    if not clips:
        raise ValueError("clips is empty: nothing to split")
    if len(clips) == 1:
        return _split_in_time(clips[0], validation_fraction, sample_rate)

    n = len(clips)
    n_validation = min(max(1, math.floor(n * validation_fraction + 0.5)), n - 1)
    ranks = sorted(range(n), key=lambda i: (_split_key(seed, clips[i]), i))
    chosen = set(ranks[:n_validation])
    train = [clip for i, clip in enumerate(clips) if i not in chosen]
    validation = [clip for i, clip in enumerate(clips) if i in chosen]
    return train, validation


def _split_key(seed: int, clip: AudioClip) -> bytes:
    # The name's own bytes (os.fsencode): any name the OS holds, not only valid UTF-8, and for a
    # UTF-8 name the same bytes as str.encode(), so existing splits stay where they were.
    return hashlib.sha256(f"{int(seed)}\0".encode() + os.fsencode(clip.path.as_posix())).digest()


def _split_in_time(
    clip: AudioClip, validation_fraction: float, sample_rate: int
) -> tuple[list[AudioClip], list[AudioClip]]:
    total = clip.audio.shape[0]
    validation_samples = math.floor(total * validation_fraction + 0.5)
    one_second = round(SINGLE_CLIP_MIN_VALIDATION_S * sample_rate)
    if total >= 2 * one_second:
        validation_samples = min(max(validation_samples, one_second), total - one_second)
    else:
        validation_samples = 0
    if validation_samples <= 0 or validation_samples >= total:
        log.warning(
            "only one file (%s) and too short to split: validating on training audio (not independent)",
            printable(clip.path),
        )
        return [clip], []
    cut = total - validation_samples
    log.warning(
        "only one file (%s): validating on its last %.2f s, which is not independent of the training audio",
        printable(clip.path),
        validation_samples / sample_rate,
    )
    train = AudioClip(clip.path, clip.audio[:cut], clip.source_sample_rate, clip.source_channels)
    validation = AudioClip(clip.path, clip.audio[cut:], clip.source_sample_rate, clip.source_channels)
    return [train], [validation]


# ---------------------------------------------------------------------------------------------
# Which windows hold sound


def window_starts(
    audio: np.ndarray, window_samples: int, hop_samples: int, silence_dbfs: float = -60.0, sample_rate: int = 48000
) -> np.ndarray:
    """Start offsets (int64 `[windows]`) of the grid windows of `audio` `[samples]` that hold sound.

    Starts are 0, hop, 2*hop ... while a whole window fits; such a window holds sound when its RMS
    is above `silence_dbfs`. A clip shorter than one window gives the single start 0 (the window
    is zero-padded) when its loudest `SOUND_FRAME_S` (its whole length, if shorter) is above
    `silence_dbfs` (see the module docstring); an empty clip gives none. `sample_rate` is the
    audio's rate: it sets that frame's length.
    """
    _check_positive("window_samples", window_samples)
    _check_positive("hop_samples", hop_samples)
    total = int(audio.shape[0])
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    threshold = 10.0 ** (silence_dbfs / 20.0)
    # Energy of every stretch from one cumulative sum, in float64 so long clips keep precision.
    energy = np.concatenate(([0.0], np.cumsum(np.square(audio, dtype=np.float64))))
    if total < window_samples:
        return np.zeros(1 if loudest_frame_rms(energy, sample_rate) > threshold else 0, dtype=np.int64)
    starts = np.arange(0, total - window_samples + 1, hop_samples, dtype=np.int64)
    window_energy = np.maximum(energy[starts + window_samples] - energy[starts], 0.0)
    loud = window_energy > threshold * threshold * window_samples
    return starts[loud]


def loudest_frame_rms(energy: np.ndarray, sample_rate: int) -> float:
    """RMS of the loudest `SOUND_FRAME_S` of a clip (its whole length if shorter), from the
    cumulative energy `[samples + 1]` (0 first) of its samples."""
    total = energy.shape[0] - 1
    frame = max(1, min(round(SOUND_FRAME_S * sample_rate), total))
    frame_energy = energy[frame:] - energy[:-frame]
    return math.sqrt(max(float(frame_energy.max()), 0.0) / frame)


def silence_reason(
    audio: np.ndarray, window_samples: int, hop_samples: int, silence_dbfs: float, sample_rate: int = 48000
) -> str:
    """Why a clip gives no window (see `window_starts`), in words, with its level."""
    total = int(audio.shape[0])
    if total == 0:
        return "empty"
    if total < window_samples:
        level = clip_level_dbfs(audio, sample_rate)
        return (
            f"silent: its loudest {SOUND_FRAME_S * 1000:g} ms is at {level:.1f} dBFS, "
            f"at or below dataset.silence_dbfs={silence_dbfs:g}"
        )
    energy = np.concatenate(([0.0], np.cumsum(np.square(audio, dtype=np.float64))))
    starts = np.arange(0, total - window_samples + 1, hop_samples)
    loudest = float((energy[starts + window_samples] - energy[starts]).max()) / window_samples
    level = 10.0 * math.log10(loudest) if loudest > 0 else -math.inf
    return (
        f"silent: its loudest {window_samples / sample_rate:g} s window is at {level:.1f} dBFS RMS, "
        f"at or below dataset.silence_dbfs={silence_dbfs:g}"
    )


def clip_level_dbfs(audio: np.ndarray, sample_rate: int = 48000) -> float:
    """The level `window_starts` judges a short clip by: its loudest SOUND_FRAME_S, in dBFS
    (-inf for silence or an empty clip)."""
    if audio.shape[0] == 0:
        return -math.inf
    rms = loudest_frame_rms(np.concatenate(([0.0], np.cumsum(np.square(audio, dtype=np.float64)))), sample_rate)
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


# ---------------------------------------------------------------------------------------------
# Augmentation and sampling


@dataclass(unsafe_hash=True)
class Augmentation(Sealed):
    """Training-time augmentation; see the module docstring for why each part is there. Also the
    `augmentation` schema of `sda.train`: sealed (read-only) once validated."""

    KEY: ClassVar[str] = "augmentation"
    enabled: bool = True
    jitter: bool = True
    gain_db: float = 6.0
    semitone_steps: tuple[int, ...] = (-2, -1, 0, 1, 2)
    p_varispeed: float = 0.5

    def validate(self) -> None:
        k = self.KEY
        steps = tuple(self.semitone_steps)
        if not steps:
            raise ConfigError(f"{k}.semitone_steps", list(steps), "at least one step (0 = unchanged)")
        for step in steps:
            if isinstance(step, bool) or not isinstance(step, (int, float)):
                raise ConfigError(f"{k}.semitone_steps", list(steps), "whole semitones in [-12, 12]")
            check_range(f"{k}.semitone_steps", step, -12, 12)
            if int(step) != step:
                raise ConfigError(f"{k}.semitone_steps", list(steps), "whole semitones in [-12, 12]")
        object.__setattr__(self, "semitone_steps", tuple(int(s) for s in steps))
        check_range(f"{k}.gain_db", self.gain_db, 0.0, 24.0)
        check_range(f"{k}.p_varispeed", self.p_varispeed, 0.0, 1.0)

    @classmethod
    def none(cls) -> Augmentation:
        """No augmentation: an epoch is the fixed windows, shuffled."""
        return cls(enabled=False, jitter=False, gain_db=0.0, semitone_steps=(0,), p_varispeed=0.0)

    @property
    def uses_jitter(self) -> bool:
        return self.enabled and self.jitter

    @property
    def uses_gain(self) -> bool:
        return self.enabled and self.gain_db > 0.0

    @property
    def uses_varispeed(self) -> bool:
        return self.enabled and self.p_varispeed > 0.0 and any(s != 0 for s in self.semitone_steps)


@functools.cache
def speed_ratio(semitones: int) -> tuple[int, int]:
    """(p, q): the simplest fraction p/q within VARISPEED_MAX_ERROR_CENTS of 2**(semitones/12).
    Reading p/q * W source samples into W output samples raises the pitch by about `semitones`."""
    target = 2.0 ** (semitones / 12.0)
    best: tuple[float, int, int] | None = None
    for q in range(1, VARISPEED_MAX_TERM + 1):
        p = round(target * q)
        if not 1 <= p <= VARISPEED_MAX_TERM:
            continue
        error_cents = abs(1200.0 * math.log2(p / q / target))
        if error_cents <= VARISPEED_MAX_ERROR_CENTS and math.gcd(p, q) == 1:
            return p, q
        if best is None or error_cents < best[0]:
            best = (error_cents, p, q)
    assert best is not None
    return best[1], best[2]


class WindowSampler:
    """The grid windows that hold sound of some clips (a clip shorter than a window is one
    zero-padded window, see `window_starts`), as fixed batches (validation) or as shuffled,
    augmented epochs (training). Shapes: batches `[batch, window_samples]` float32.
    `windows_per_clip[i]` counts clip i's windows (0: it holds no sound)."""

    def __init__(
        self,
        clips: list[AudioClip],
        window_samples: int,
        hop_samples: int,
        silence_dbfs: float = -60.0,
        augmentation: Augmentation | None = None,
        sample_rate: int = 48000,
    ) -> None:
        _check_positive("window_samples", window_samples)
        _check_positive("hop_samples", hop_samples)
        self.window_samples = int(window_samples)
        self.hop_samples = int(hop_samples)
        self.silence_dbfs = float(silence_dbfs)
        self.sample_rate = int(sample_rate)
        self.augmentation = augmentation if augmentation is not None else Augmentation()
        self._audio: list[np.ndarray] = []
        clip_indices, starts = [], []
        for index, clip in enumerate(clips):
            audio = np.asarray(clip.audio)
            if audio.ndim != 1:
                raise ValueError(f"clip {clip.path} has shape {audio.shape}: expected mono [samples]")
            if not np.isfinite(audio).all():
                raise ValueError(f"clip {clip.path} holds NaN or infinite samples; load it with load_audio_folder")
            # Shares memory with the clip (no copy when it is float32 already).
            self._audio.append(np.asarray(audio, dtype=np.float32))
            clip_starts = window_starts(audio, self.window_samples, self.hop_samples, self.silence_dbfs, sample_rate)
            clip_indices.append(np.full(clip_starts.shape, index, dtype=np.int64))
            starts.append(clip_starts)
        self.windows_per_clip = [int(s.shape[0]) for s in starts]
        self._clip_of_window = (
            torch.from_numpy(np.concatenate(clip_indices)) if clips else torch.zeros(0, dtype=torch.int64)
        )
        self._start_of_window = torch.from_numpy(np.concatenate(starts)) if clips else torch.zeros(0, dtype=torch.int64)
        lengths = torch.tensor([a.shape[0] for a in self._audio], dtype=torch.int64)
        # The last start a window may take in its clip (0 for clips shorter than a window).
        self._max_start_of_window = (
            (lengths[self._clip_of_window] - self.window_samples).clamp(min=0)
            if clips
            else torch.zeros(0, dtype=torch.int64)
        )

    def __len__(self) -> int:
        return int(self._start_of_window.shape[0])

    def fixed_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """The unaugmented windows in order (clip by clip, start by start), `batch_size` at a time."""
        _check_positive("batch_size", batch_size)
        clip_ids, starts = self._clip_of_window.tolist(), self._start_of_window.tolist()
        for first in range(0, len(self), batch_size):
            last = min(first + batch_size, len(self))
            yield torch.from_numpy(self._gather(clip_ids[first:last], starts[first:last], self.window_samples))

    def fixed_windows(self) -> torch.Tensor:
        """All unaugmented windows in order, `[windows, window_samples]`."""
        return torch.from_numpy(
            self._gather(self._clip_of_window.tolist(), self._start_of_window.tolist(), self.window_samples)
        )

    def epoch(self, generator: torch.Generator, batch_size: int) -> Iterator[torch.Tensor]:
        """Every window once, shuffled and augmented, in batches `[<= batch_size, window_samples]`.

        All random numbers for the epoch are drawn from `generator` (a CPU generator) when this is
        called, before the first batch."""
        _check_positive("batch_size", batch_size)
        if generator.device.type != "cpu":
            raise ValueError(f"generator is on {generator.device}: window sampling draws on a CPU generator")
        count = len(self)
        aug = self.augmentation
        order = torch.randperm(count, generator=generator)
        clip_ids = self._clip_of_window[order]
        starts = self._start_of_window[order]
        if aug.uses_jitter and self.hop_samples > 1:
            half_hop = self.hop_samples // 2
            offsets = torch.randint(-half_hop, half_hop + 1, (count,), generator=generator)
            starts = torch.minimum((starts + offsets).clamp(min=0), self._max_start_of_window[order])
        steps = torch.zeros(count, dtype=torch.int64)
        if aug.uses_varispeed:
            shifted = torch.rand(count, generator=generator, dtype=torch.float64) < aug.p_varispeed
            choice = torch.randint(0, len(aug.semitone_steps), (count,), generator=generator)
            steps = torch.where(shifted, torch.tensor(aug.semitone_steps, dtype=torch.int64)[choice], steps)
        gains = None
        if aug.uses_gain:
            gains_db = (torch.rand(count, generator=generator, dtype=torch.float64) * 2.0 - 1.0) * aug.gain_db
            gains = torch.pow(10.0, gains_db / 20.0).float()
        return self._batches(clip_ids, starts, steps, gains, batch_size)

    def _batches(
        self,
        clip_ids: torch.Tensor,
        starts: torch.Tensor,
        steps: torch.Tensor,
        gains: torch.Tensor | None,
        batch_size: int,
    ) -> Iterator[torch.Tensor]:
        # Windows are made a chunk of several batches at a time, so each varispeed step costs one
        # resampling call per chunk: a call's fixed cost (thread start-up, worst when the cores are
        # shared) outweighs its arithmetic at batch sizes. Copies and gains run in numpy, which
        # copies a few MB in one memcpy where torch would wake its thread pool.
        chunk = max(1, CHUNK_SAMPLES // (batch_size * self.window_samples)) * batch_size
        clip_ids_np, starts_np, steps_np = clip_ids.numpy(), starts.numpy(), steps.numpy()
        gains_np = gains.numpy() if gains is not None else None
        for first in range(0, clip_ids_np.shape[0], chunk):
            last = min(first + chunk, clip_ids_np.shape[0])
            windows = self._augmented(clip_ids_np[first:last], starts_np[first:last], steps_np[first:last])
            if gains_np is not None:
                windows *= gains_np[first:last, None]
            for offset in range(0, last - first, batch_size):
                yield torch.from_numpy(windows[offset : offset + batch_size])

    def _augmented(self, clip_ids: np.ndarray, starts: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """`[len(starts), window_samples]`: the windows at `starts`, each varispeed by its step."""
        if not steps.any():
            return self._gather(clip_ids.tolist(), starts.tolist(), self.window_samples)
        windows = np.empty((starts.shape[0], self.window_samples), dtype=np.float32)
        for step in np.unique(steps).tolist():
            rows = np.flatnonzero(steps == step)
            ids, at = clip_ids[rows].tolist(), starts[rows].tolist()
            windows[rows] = self._gather(ids, at, self.window_samples) if step == 0 else self._varispeed(ids, at, step)
        return windows

    def _varispeed(self, clip_ids: list[int], starts: list[int], semitones: int) -> np.ndarray:
        """Windows `[k, window_samples]` resampled from segments p/q windows long centred on each
        window, with enough context either side that the sinc kernel never sees a false edge."""
        p, q = speed_ratio(semitones)
        resampler = get_resampler(p, q, "cpu", torch.float32)
        # Context of at least the kernel's half-width, a multiple of p so that it maps to a whole
        # number of output samples.
        context_in = p * math.ceil((resampler.width + 1) / p)
        context_out = context_in * q // p
        source_length = math.ceil(self.window_samples * p / q)
        firsts = []
        for clip, start in zip(clip_ids, starts, strict=True):
            clip_length = self._audio[clip].shape[0]
            centred = round(start + self.window_samples / 2 - self.window_samples * p / q / 2)
            firsts.append(min(max(centred, 0), max(clip_length - source_length, 0)) - context_in)
        segments = self._gather(clip_ids, firsts, source_length + 2 * context_in)
        with torch.no_grad():
            resampled = resampler(torch.from_numpy(segments))
        return resampled[:, context_out : context_out + self.window_samples].numpy()

    def _gather(self, clip_ids: list[int], starts: list[int], length: int) -> np.ndarray:
        """`[len(starts), length]` float32: `length` samples of each clip from each start, zeros
        where that runs outside the clip."""
        out = np.empty((len(starts), length), dtype=np.float32)
        for row, (clip, start) in enumerate(zip(clip_ids, starts, strict=True)):
            audio = self._audio[clip]
            if 0 <= start and start + length <= audio.shape[0]:
                out[row] = audio[start : start + length]
                continue
            out[row] = 0.0
            lo, hi = max(start, 0), min(start + length, audio.shape[0])
            if hi > lo:
                out[row, lo - start : hi - start] = audio[lo:hi]
        return out


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or int(value) != value or value <= 0:
        raise ValueError(f"{name}={value!r}: must be a positive whole number")
