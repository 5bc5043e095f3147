"""Spectrogram pictures for the report: levels, colour map, PNG bytes, one file per done output.

Log-magnitude STFT of the first channel over at most SPECTROGRAM_MAX_S seconds, log-frequency
rows from SPECTROGRAM_F_MIN_HZ to Nyquist, levels from SPECTROGRAM_FLOOR_DB to SPECTROGRAM_TOP_DB
relative to a full-scale sine. The pictures go into `spectrograms/` in each job folder, named by
the output's identity, and are never redrawn once there: the report is rewritten at the end of
every run and resume, and its cost must not grow with the sweep. numpy and zlib only, no imaging
library.

A run draws each output's picture as it writes the output, from levels the pipeline computed on
the device for the whole batch (sda.dsp.picture, the same levels within float32 rounding); the
report draws those still missing from the files, in parallel.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf

from sda.dsp.picture import (
    PictureSettings,
    band_bins,
    column_bounds,
    frame_starts,
    full_scale_power,
    picture_n_fft,
    picture_row_edges_hz,
    picture_window,
)
from sda.files import write_atomic

SPECTROGRAM_WIDTH = 400
SPECTROGRAM_HEIGHT = 120
SPECTROGRAM_MAX_S = 30.0
SPECTROGRAM_F_MIN_HZ = 30.0
SPECTROGRAM_FLOOR_DB = -110.0
SPECTROGRAM_TOP_DB = -10.0
# Colour map anchors (position, RGB): black -> purple -> red -> orange -> pale yellow. The sum
# R+G+B rises at every anchor, so brightness orders levels.
_COLOURS = np.array(
    [(0.0, 0, 0, 0), (0.25, 40, 10, 90), (0.5, 180, 40, 90), (0.75, 250, 140, 30), (1.0, 255, 255, 200)],
    dtype=np.float64,
)
# What the pipeline computes on the device for a run's pictures (sda.dsp.picture).
SPECTROGRAM_PICTURE = PictureSettings(SPECTROGRAM_WIDTH, SPECTROGRAM_HEIGHT, SPECTROGRAM_MAX_S, SPECTROGRAM_F_MIN_HZ)


# zlib's level for the pictures: 1 is four times faster than 6 here for 3 % more bytes (measured
# on a 400 x 120 spectrogram: 56.3 kB in 2.9 ms against 54.6 kB in 11.9 ms).
PNG_COMPRESSION = 1


def png_bytes(rgb: np.ndarray) -> bytes:
    """A PNG file of an `[height, width, 3]` uint8 image (8-bit RGB, filter 0 on every row)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"image of shape {rgb.shape} and dtype {rgb.dtype}: expected [height, width, 3] uint8")
    height, width, _ = rgb.shape
    rows = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, width * 3)], axis=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), PNG_COMPRESSION))
        + chunk(b"IEND", b"")
    )


def spectrogram_n_fft(sample_rate: int) -> int:
    """About 43 ms: 2048 at 44.1 and 48 kHz, 4096 at 96 kHz."""
    return picture_n_fft(sample_rate)


def spectrogram_row_edges_hz(sample_rate: int, height: int = SPECTROGRAM_HEIGHT) -> np.ndarray:
    """`height + 1` band edges, log-spaced from SPECTROGRAM_F_MIN_HZ to Nyquist, lowest first."""
    return picture_row_edges_hz(sample_rate, height, SPECTROGRAM_F_MIN_HZ)


def spectrogram_row_frequencies(sample_rate: int, height: int = SPECTROGRAM_HEIGHT) -> np.ndarray:
    """Centre frequency in Hz of each image row, top row (highest band) first."""
    edges = spectrogram_row_edges_hz(sample_rate, height)
    return np.sqrt(edges[:-1] * edges[1:])[::-1]


def colour_map(levels: np.ndarray) -> np.ndarray:
    """Levels in [0, 1] -> uint8 RGB (`[..., 3]`), brighter for higher levels."""
    levels = np.clip(levels, 0.0, 1.0)
    channels = [np.interp(levels, _COLOURS[:, 0], _COLOURS[:, i]) for i in (1, 2, 3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


def spectrogram_levels_db(
    signal: np.ndarray, sample_rate: int, width: int = SPECTROGRAM_WIDTH, height: int = SPECTROGRAM_HEIGHT
) -> np.ndarray:
    """`[height, width]` levels in dB relative to a full-scale sine, top row highest frequency.

    Frames of `spectrogram_n_fft` samples (Hann) at half-frame hops, or closer when there are
    fewer than `width` of them; each column is the mean power of its frames, each row the
    strongest bin of its band (a band narrower than a bin takes the bin it lies in)."""
    signal = np.asarray(signal, dtype=np.float32).reshape(-1)
    n_fft = spectrogram_n_fft(sample_rate)
    if signal.size < n_fft:
        signal = np.pad(signal, (0, n_fft - signal.size))
    starts = frame_starts(signal.size, n_fft, width)
    n_frames = len(starts)
    window = picture_window(n_fft)
    frames = signal[starts[:, None] + np.arange(n_fft)] * window
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # [n_frames, bins]
    bounds = column_bounds(n_frames, width)
    columns = np.add.reduceat(power, bounds, axis=0) / np.diff(np.append(bounds, n_frames))[:, None]
    low, high = band_bins(sample_rate, n_fft, height, SPECTROGRAM_F_MIN_HZ)
    bands = np.stack([columns[:, lo:hi].max(axis=1) for lo, hi in zip(low, high, strict=True)])  # [height, width]
    return 10 * np.log10(bands[::-1] / full_scale_power(window) + 1e-20)


def spectrogram_image(
    signal: np.ndarray, sample_rate: int, width: int = SPECTROGRAM_WIDTH, height: int = SPECTROGRAM_HEIGHT
) -> np.ndarray:
    """`[height, width, 3]` uint8 picture of `spectrogram_levels_db`."""
    return levels_image(spectrogram_levels_db(signal, sample_rate, width, height))


def levels_image(levels_db: np.ndarray) -> np.ndarray:
    """`[height, width, 3]` uint8 picture of `[height, width]` levels in dB."""
    return colour_map((np.asarray(levels_db) - SPECTROGRAM_FLOOR_DB) / (SPECTROGRAM_TOP_DB - SPECTROGRAM_FLOOR_DB))


def write_spectrogram(audio_path: Path, png_path: Path) -> None:
    """Draw the first channel of the first SPECTROGRAM_MAX_S seconds of `audio_path`."""
    info = sf.info(str(audio_path))
    frames = min(info.frames, round(SPECTROGRAM_MAX_S * info.samplerate))
    audio, sample_rate = sf.read(str(audio_path), frames=frames, dtype="float32", always_2d=True)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(png_path, png_bytes(spectrogram_image(audio[:, 0], sample_rate)), replace=True)
