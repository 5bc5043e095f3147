"""Waveform pictures for the report's one-shots: a hit is seen at a glance, attack, body and tail.

Every channel's samples are drawn into the same picture, each column the range (min to max) of
the samples it covers, on a linear amplitude scale (full scale at the top and bottom edges). The
time axis spans WAVEFORM_SPAN_S, or the whole file when it is longer: hits of a kit are drawn to
one scale, so a short hit looks short beside a long one. A faint line marks the zero axis.
Pictures go into `spectrograms/` beside the spectrograms (the report's picture folder), named
by the output's identity, and are never redrawn once there. numpy and zlib only.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf

from sda.files import write_atomic
from sda.report.spectrogram import png_bytes

WAVEFORM_WIDTH = 240
WAVEFORM_HEIGHT = 48
WAVEFORM_SPAN_S = 1.0
WAVEFORM_INK = (40, 60, 120)
WAVEFORM_AXIS = (200, 200, 210)
WAVEFORM_PAPER = (250, 250, 250)


def waveform_columns(audio: np.ndarray, sample_rate: int, width: int = WAVEFORM_WIDTH) -> tuple[np.ndarray, np.ndarray]:
    """(lowest, highest) sample `[width]` of the frames each column covers, over every channel of
    `audio` `[frames, channels]`; columns past the file's end are (0, 0). The picture spans
    max(WAVEFORM_SPAN_S, the file's length)."""
    audio = np.asarray(audio, dtype=np.float32).reshape(audio.shape[0], -1)
    frames = audio.shape[0]
    span = max(round(WAVEFORM_SPAN_S * sample_rate), frames, 1)
    edges = np.floor(np.arange(width + 1) * span / width).astype(np.int64)
    low, high = np.zeros(width, np.float32), np.zeros(width, np.float32)
    lowest, highest = audio.min(axis=1), audio.max(axis=1)
    for column in range(width):
        start, stop = edges[column], min(max(edges[column + 1], edges[column] + 1), frames)
        if start < frames:
            low[column], high[column] = lowest[start:stop].min(), highest[start:stop].max()
    return low, high


def waveform_image(
    audio: np.ndarray, sample_rate: int, width: int = WAVEFORM_WIDTH, height: int = WAVEFORM_HEIGHT
) -> np.ndarray:
    """`[height, width, 3]` uint8 picture of `audio` `[frames, channels]`."""
    low, high = waveform_columns(audio, sample_rate, width)
    image = np.empty((height, width, 3), np.uint8)
    image[:] = WAVEFORM_PAPER
    middle = (height - 1) / 2
    image[int(math.floor(middle)) : int(math.ceil(middle)) + 1, :] = WAVEFORM_AXIS

    def row(value: np.ndarray) -> np.ndarray:  # +1 at the top edge, -1 at the bottom
        return np.clip(np.rint(middle - np.clip(value, -1, 1) * middle), 0, height - 1).astype(np.int64)

    top, bottom = row(high), row(low)
    rows = np.arange(height)[:, None]
    ink = (rows >= top[None, :]) & (rows <= bottom[None, :]) & (high > low)[None, :]
    image[ink] = WAVEFORM_INK
    return image


def write_waveform(audio_path: Path, png_path: Path) -> None:
    """Draw `audio_path` (every channel, at most max(WAVEFORM_SPAN_S, its length))."""
    audio, sample_rate = sf.read(str(audio_path), dtype="float32", always_2d=True)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(png_path, png_bytes(waveform_image(audio, sample_rate)), replace=True)
