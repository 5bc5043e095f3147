"""Audio bytes for WAV, FLAC and OGG: a complete file encoded in memory (`encode_audio`).

Quantization is ours, not libsndfile's, so the -1 dBFS ceiling holds in the integers:
16-bit gets TPDF dither (triangular, +-1 LSB) from a seeded generator; 24-bit is rounded; 32-bit
is float. libsndfile stores an int32 sample as PCM_24 by keeping its top 24 bits, so 24-bit
values are handed over shifted left by 8. Tags: FLAC and OGG accept them only before the first
frame is written (WAV either way), so they are always set first. libsndfile stamps every Ogg page
with a stream serial number drawn from the clock; it is replaced by one from `dither_seed` (page
checksums recomputed), so the same audio always gives the same bytes in every format.
Writing the bytes to disk is sda.outputs' job.

With a true-peak ceiling (loudness-normalized outputs), the decoded file's true peak is measured
(sda.dsp.loudness) and an encoding over it is redone with the input scaled down, as a Vorbis
encoding over the sample-peak ceiling is: dither and lossy coding may lift a peak.
"""

from __future__ import annotations

import hashlib
import io
import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch

from sda.dsp.loudness import true_peak
from sda.dsp.normalize import OUTPUT_PEAK_DBFS
from sda.errors import OutputError

# libsndfile's subtype for each format and bit depth: the one table of what each format allows
# (the export options in sda.config take their allowed bit depths from it).
FORMATS: dict[str, dict[int, str]] = {
    "wav": {16: "PCM_16", 24: "PCM_24", 32: "FLOAT"},
    "flac": {16: "PCM_16", 24: "PCM_24"},
    "ogg": {16: "VORBIS"},  # Vorbis has no bit depth; 16 stands for its nominal precision
}
EXTENSIONS = {"wav": ".wav", "flac": ".flac", "ogg": ".ogg"}
_CONTAINERS = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG"}
TAG_NAMES = ("title", "comment", "software", "artist", "date", "album", "copyright", "license", "genre")
OGG_ATTEMPTS = 6
WRITE_BLOCK_FRAMES = 1 << 16
_BIT_REVERSED = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


@dataclass(frozen=True)
class EncodedAudio:
    """A complete file in memory."""

    data: bytes
    format: str
    subtype: str
    sample_rate: int
    channels: int
    frames: int
    sha256: str
    peak_dbfs: float  # sample peak of what a reader decodes
    true_peak_dbtp: float | None = None  # of what a reader decodes; measured only under a true-peak ceiling


def _check_format(format: str, bit_depth: int) -> str:
    if format not in FORMATS:
        raise ValueError(f"format={format!r}: allowed {', '.join(FORMATS)}")
    if bit_depth not in FORMATS[format]:
        raise ValueError(f"bit_depth={bit_depth} for {format}: allowed {', '.join(map(str, FORMATS[format]))}")
    return FORMATS[format][bit_depth]


def _ceiling_amplitude(ceiling_dbfs: float) -> float:
    return 10 ** (ceiling_dbfs / 20)


def quantize(audio: np.ndarray, bit_depth: int, ceiling_dbfs: float, dither_seed: int) -> np.ndarray:
    """`[channels, frames]` float -> `[frames, channels]` samples as soundfile takes them."""
    ceiling = _ceiling_amplitude(ceiling_dbfs)
    if bit_depth == 32:
        limit = np.float32(ceiling)
        if float(limit) > ceiling:  # the float32 nearest the ceiling may lie above it
            limit = np.nextafter(limit, np.float32(0))
        return np.clip(audio.T.astype(np.float32), -limit, limit)
    bits = 15 if bit_depth == 16 else 23
    full_scale = 2.0**bits
    limit = math.floor(ceiling * full_scale)
    if bit_depth == 24 and audio.dtype == np.float32:
        # Scaling a float32 by 2^23 is exact, and so is rounding it to an integer: the same
        # integers as in float64, with half the memory traffic (600 s files).
        scaled = audio.T * np.float32(full_scale)
        np.rint(scaled, out=scaled)
        np.clip(scaled, -limit, limit, out=scaled)
        return scaled.astype(np.int32) << 8
    scaled = audio.T.astype(np.float64) * full_scale
    if bit_depth == 16:
        rng = np.random.Generator(np.random.PCG64(dither_seed))
        scaled += rng.uniform(-0.5, 0.5, scaled.shape) + rng.uniform(-0.5, 0.5, scaled.shape)
    integers = np.clip(np.rint(scaled), -limit, limit)
    if bit_depth == 16:
        return integers.astype(np.int16)
    return integers.astype(np.int32) << 8  # libsndfile keeps the top 24 bits of an int32


def _encode_once(
    samples: np.ndarray, sample_rate: int, format: str, subtype: str, tags: dict[str, str], ogg_quality: float
) -> bytes:
    buffer = io.BytesIO()
    channels = samples.shape[1]
    # libsndfile's Vorbis "compression level" runs opposite to quality: 0 is the best
    compression = 1.0 - ogg_quality if format == "ogg" else None
    with sf.SoundFile(
        buffer,
        "w",
        samplerate=sample_rate,
        channels=channels,
        format=_CONTAINERS[format],
        subtype=subtype,
        compression_level=compression,
    ) as handle:
        for name, value in tags.items():
            setattr(handle, name, value)  # before the first frame: FLAC and OGG refuse strings later
        # In blocks: one large write to libsndfile's Vorbis encoder overflows its stack (a crash
        # at about 60 s of 48 kHz stereo); the bytes are the same as one write's for PCM.
        for start in range(0, samples.shape[0], WRITE_BLOCK_FRAMES):
            handle.write(samples[start : start + WRITE_BLOCK_FRAMES])
    return buffer.getvalue()


def _ogg_crc(page: bytes) -> int:
    """Ogg's page checksum (CRC-32, polynomial 0x04C11DB7, MSB first, init 0, no final xor),
    computed with zlib's LSB-first CRC-32 on bit-reversed bytes."""
    reflected = zlib.crc32(page.translate(_BIT_REVERSED), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


def _set_ogg_serial(data: bytes, serial: int) -> bytes:
    """`data` (a single-stream Ogg file) with every page's serial number set to `serial`."""
    out = bytearray(data)
    position = 0
    while position < len(out):
        if out[position : position + 4] != b"OggS" or position + 27 > len(out):
            raise OutputError(f"Ogg encoding is malformed at byte {position}")
        segments = out[position + 26]
        length = 27 + segments + sum(out[position + 27 : position + 27 + segments])
        out[position + 14 : position + 18] = struct.pack("<I", serial & 0xFFFFFFFF)
        out[position + 22 : position + 26] = bytes(4)
        out[position + 22 : position + 26] = struct.pack("<I", _ogg_crc(bytes(out[position : position + length])))
        position += length
    return bytes(out)


def pcm_decoded_peak(samples: np.ndarray, bit_depth: int) -> float:
    """The sample peak a reader decodes from PCM written from `quantize`'s `samples`, without
    decoding the file: libsndfile reads an integer sample as its value over 2^(bits - 1) and a
    float sample as it is, both exact in float64."""
    if samples.size == 0:
        return 0.0
    if bit_depth == 32:
        return float(np.abs(samples).max())
    largest = max(int(samples.max()), -int(samples.min()))  # int16's -32768 has no abs
    return largest / 2.0 ** (31 if bit_depth == 24 else 15)  # 24-bit values are handed over shifted left by 8


def _decoded_peak(data: bytes) -> tuple[float, int]:
    decoded, _ = sf.read(io.BytesIO(data), dtype="float64", always_2d=True)
    return float(np.abs(decoded).max()) if decoded.size else 0.0, decoded.shape[0]


def _decoded_true_peak(data: bytes) -> float:
    decoded, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return true_peak(torch.from_numpy(np.ascontiguousarray(decoded.T)))


def encode_audio(
    audio: np.ndarray,
    sample_rate: int,
    format: str,
    bit_depth: int,
    *,
    tags: dict[str, str] | None = None,
    dither_seed: int = 0,
    ceiling_dbfs: float = OUTPUT_PEAK_DBFS,
    ogg_quality: float = 0.7,
    true_peak_ceiling_dbtp: float | None = None,
) -> EncodedAudio:
    """Encode `[channels, frames]` float audio into a complete file in memory.

    The decoded sample peak never exceeds `ceiling_dbfs`: PCM is clamped in the integers, and a
    Vorbis encoding whose decoded peak overshoots is redone with the input scaled down. With
    `true_peak_ceiling_dbtp`, the decoded true peak never exceeds it either (likewise redone)."""
    subtype = _check_format(format, bit_depth)
    audio = np.asarray(audio)
    if audio.ndim != 2 or audio.shape[0] < 1 or audio.shape[1] < 1:
        raise ValueError(f"audio shape {audio.shape}: expected [channels, frames] with at least one of each")
    if not np.isfinite(audio).all():
        raise ValueError("audio holds non-finite samples; refusing to encode")
    tags = {k: str(v) for k, v in (tags or {}).items()}
    unknown = sorted(set(tags) - set(TAG_NAMES))
    if unknown:
        raise ValueError(f"tags {unknown}: allowed {', '.join(TAG_NAMES)}")
    ceiling = _ceiling_amplitude(ceiling_dbfs)
    frames = audio.shape[1]
    true_ceiling = None if true_peak_ceiling_dbtp is None else _ceiling_amplitude(true_peak_ceiling_dbtp)
    measured_true_peak = None
    # Clamped first: scaling down a signal that quantize() would clamp anyway would leave it
    # unchanged, and an overshoot with it.
    source = np.clip(audio.astype(np.float64), -ceiling, ceiling) if format == "ogg" else audio
    gain = 1.0
    for _ in range(OGG_ATTEMPTS):
        if format == "ogg":
            samples = quantize(source * gain, 32, ceiling_dbfs, 0)
            data = _set_ogg_serial(_encode_once(samples, sample_rate, format, subtype, tags, ogg_quality), dither_seed)
            peak, decoded_frames = _decoded_peak(data)
            if decoded_frames != frames:
                raise OutputError(f"{format} encoding gave {decoded_frames} frames for {frames}")
        else:
            scaled = source if gain == 1.0 else source * gain
            samples = quantize(scaled, bit_depth, ceiling_dbfs, dither_seed)
            data = _encode_once(samples, sample_rate, format, subtype, tags, ogg_quality)
            peak = pcm_decoded_peak(samples, bit_depth)  # what a reader decodes, without decoding
        over = peak / ceiling if format == "ogg" and peak > ceiling else 1.0
        if true_ceiling is not None:
            measured_true_peak = _decoded_true_peak(data)
            over = max(over, measured_true_peak / true_ceiling)
        if over <= 1.0:
            break
        gain *= 0.995 / over
    else:
        raise OutputError(f"could not keep the {format} file's peak under its ceiling in {OGG_ATTEMPTS} attempts")
    return EncodedAudio(
        data=data,
        format=format,
        subtype=subtype,
        sample_rate=int(sample_rate),
        channels=int(audio.shape[0]),
        frames=int(frames),
        sha256=hashlib.sha256(data).hexdigest(),
        peak_dbfs=20 * math.log10(peak) if peak > 0 else float("-inf"),
        true_peak_dbtp=20 * math.log10(measured_true_peak) if measured_true_peak else None,
    )
