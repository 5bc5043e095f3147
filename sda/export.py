"""Writing outputs so that nothing half-written ever looks finished.

Order for every output (sda.outputs follows it):
    1. encode the audio in memory (`encode_audio`): bytes, frame count, sha256;
    2. write the sidecar JSON, which records that frame count and checksum (`write_sidecar`);
    3. write the audio bytes (`write_bytes_atomic`).
Each write goes to a hidden temporary file in the target folder, is flushed and fsynced, then
moved into place with `os.replace` (and the folder fsynced). A kill between 2 and 3 leaves a
sidecar without its audio; a kill during a write leaves only a temporary file, removed at the
next start (`remove_stale_temporaries`). An output is done only when `verify_output` finds its
audio matching the sidecar's frame count and checksum: a WAV truncated by a killed process
still opens and reads without error, so a file's existence proves nothing.

Quantisation is ours, not libsndfile's, so the -1 dBFS ceiling holds in the integers:
16-bit gets TPDF dither (triangular, +-1 LSB) from a seeded generator; 24-bit is rounded; 32-bit
is float. libsndfile stores an int32 sample as PCM_24 by keeping its top 24 bits, so 24-bit
values are handed over shifted left by 8. Tags: FLAC and OGG accept them only before the first
frame is written (WAV either way), so they are always set first. libsndfile stamps every Ogg page
with a stream serial number drawn from the clock; it is replaced by one from `dither_seed` (page
checksums recomputed), so the same audio always gives the same bytes in every format.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from sda.errors import OutputError

CEILING_DBFS = -1.0
FORMATS: dict[str, dict[int, str]] = {
    "wav": {16: "PCM_16", 24: "PCM_24", 32: "FLOAT"},
    "flac": {16: "PCM_16", 24: "PCM_24"},
    "ogg": {16: "VORBIS"},  # Vorbis has no bit depth; 16 stands for its nominal precision
}
EXTENSIONS = {"wav": ".wav", "flac": ".flac", "ogg": ".ogg"}
_CONTAINERS = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG"}
TAG_NAMES = ("title", "comment", "software", "artist", "date", "album", "copyright", "license", "genre")
TEMP_GLOB = ".*.tmp"
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


def _check_format(format: str, bit_depth: int) -> str:
    if format not in FORMATS:
        raise ValueError(f"format={format!r}: allowed {', '.join(FORMATS)}")
    if bit_depth not in FORMATS[format]:
        raise ValueError(f"bit_depth={bit_depth} for {format}: allowed {', '.join(map(str, FORMATS[format]))}")
    return FORMATS[format][bit_depth]


def _ceiling_amplitude(ceiling_dbfs: float) -> float:
    return 10 ** (ceiling_dbfs / 20)


def quantise(audio: np.ndarray, bit_depth: int, ceiling_dbfs: float, dither_seed: int) -> np.ndarray:
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


def _decoded_peak(data: bytes) -> tuple[float, int]:
    decoded, _ = sf.read(io.BytesIO(data), dtype="float64", always_2d=True)
    return float(np.abs(decoded).max()) if decoded.size else 0.0, decoded.shape[0]


def encode_audio(
    audio: np.ndarray,
    sample_rate: int,
    format: str,
    bit_depth: int,
    *,
    tags: dict[str, str] | None = None,
    dither_seed: int = 0,
    ceiling_dbfs: float = CEILING_DBFS,
    ogg_quality: float = 0.7,
) -> EncodedAudio:
    """Encode `[channels, frames]` float audio into a complete file in memory.

    The decoded sample peak never exceeds `ceiling_dbfs`: PCM is clamped in the integers, and a
    Vorbis encoding whose decoded peak overshoots is redone with the input scaled down."""
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
    if format == "ogg":
        # Clamped first, as PCM is: scaling down a signal that quantise() would clamp anyway
        # would leave it unchanged, and the encoder's overshoot with it.
        source = np.clip(audio.astype(np.float64), -ceiling, ceiling)
        gain = 1.0
        for _ in range(OGG_ATTEMPTS):
            data = _encode_once(
                quantise(source * gain, 32, ceiling_dbfs, 0), sample_rate, format, subtype, tags, ogg_quality
            )
            data = _set_ogg_serial(data, dither_seed)
            peak, decoded_frames = _decoded_peak(data)
            if decoded_frames != frames:
                raise OutputError(f"Vorbis encoding gave {decoded_frames} frames for {frames}")
            if peak <= ceiling:
                break
            gain *= ceiling / peak * 0.995
        else:
            raise OutputError(f"could not keep the Vorbis peak under {ceiling_dbfs} dBFS in {OGG_ATTEMPTS} attempts")
    else:
        data = _encode_once(
            quantise(audio, bit_depth, ceiling_dbfs, dither_seed), sample_rate, format, subtype, tags, ogg_quality
        )
        peak, _ = _decoded_peak(data)
    return EncodedAudio(
        data=data,
        format=format,
        subtype=subtype,
        sample_rate=int(sample_rate),
        channels=int(audio.shape[0]),
        frames=int(frames),
        sha256=hashlib.sha256(data).hexdigest(),
        peak_dbfs=20 * math.log10(peak) if peak > 0 else float("-inf"),
    )


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename is still atomic
    finally:
        os.close(fd)


def _describe(error: OSError, path: Path) -> str:
    folder = path.parent
    if error.errno == errno.ENOSPC:
        try:
            free = shutil.disk_usage(folder).free / 1e6
            return f"disk full while writing {path.name}: {free:.0f} MB free in {folder}"
        except OSError:
            return f"disk full while writing {path.name} in {folder}"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write into {folder}: {error.strerror}"
    return f"cannot write {path}: {error.strerror or error}"


def write_bytes_atomic(path: Path, data: bytes, replace: bool = False) -> None:
    """Write `data` to `path` through a temporary file in the same folder. Outputs are never
    replaced (OutputError if `path` exists); `replace=True` is for files regenerated on every
    run (the report), which a reader then sees whole, old or new. Raises OutputError (one line)
    on any failure, leaving nothing behind."""
    path = Path(path)
    if path.exists() and not replace:
        raise OutputError(f"{path} already exists; sda never overwrites outputs")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists() and not replace:
            raise OutputError(f"{path} already exists; sda never overwrites outputs")
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except OSError as error:
        raise OutputError(_describe(error, path)) from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def write_json_atomic(path: Path, data: Any, replace: bool = False) -> None:
    """JSON, atomically; NaN or infinity raise ValueError, so the file stays valid JSON."""
    text = json.dumps(data, indent=2, allow_nan=False, default=str)
    write_bytes_atomic(Path(path), (text + "\n").encode(), replace=replace)


def write_sidecar(path: Path, record: dict[str, Any]) -> None:
    """JSON, atomically. NaN or infinity in the record raise ValueError: the file stays valid JSON."""
    text = json.dumps(record, indent=2, allow_nan=False, default=str)
    write_bytes_atomic(Path(path), (text + "\n").encode())


def read_sidecar(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: not a JSON object")
    return record


def output_stem(timestamp_utc: datetime, seed: int) -> str:
    """`gen_{UTC timestamp}_seed{seed}`, e.g. gen_20261124T031522Z_seed7."""
    if timestamp_utc.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware (UTC)")
    return f"gen_{timestamp_utc.astimezone(UTC):%Y%m%dT%H%M%SZ}_seed{seed}"


def reserve_output_paths(folder: Path, timestamp_utc: datetime, seed: int, format: str) -> tuple[Path, Path]:
    """(audio path, sidecar path) whose names are both free; `_2`, `_3` ... when taken."""
    folder = Path(folder)
    stem = output_stem(timestamp_utc, seed)
    candidate, n = stem, 1
    while (folder / f"{candidate}{EXTENSIONS[format]}").exists() or (folder / f"{candidate}.json").exists():
        n += 1
        candidate = f"{stem}_{n}"
    return folder / f"{candidate}{EXTENSIONS[format]}", folder / f"{candidate}.json"


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporary files left by killed processes; returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.glob(TEMP_GLOB)):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@dataclass(frozen=True)
class Verification:
    ok: bool
    reason: str
    sidecar_path: Path
    audio_path: Path | None
    record: dict[str, Any] | None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_output(sidecar_path: Path) -> Verification:
    """Is this output complete? Its sidecar parses, its audio exists, and the audio's frame
    count, rate, channels and sha256 match the sidecar. Never raises for a bad output."""
    sidecar_path = Path(sidecar_path)

    def fail(reason: str, audio: Path | None = None, record: dict | None = None) -> Verification:
        return Verification(False, reason, sidecar_path, audio, record)

    try:
        record = read_sidecar(sidecar_path)
        info = record["file"]
        name, frames, sha = info["name"], int(info["frames"]), info["sha256"]
        rate, channels = int(info["sample_rate"]), int(info["channels"])
    except FileNotFoundError:
        return fail("sidecar missing")
    except (ValueError, KeyError, TypeError, OSError) as error:
        return fail(f"sidecar unparsable: {error}")
    audio = sidecar_path.parent / name
    if Path(name).name != name:
        return fail(f"sidecar names a file outside its folder: {name!r}", None, record)
    if not audio.is_file():
        return fail("audio file missing", audio, record)
    try:
        found = sf.info(str(audio))
    except (RuntimeError, sf.LibsndfileError) as error:
        return fail(f"audio unreadable: {error}", audio, record)
    if found.frames != frames:
        return fail(f"frame count {found.frames} != {frames}", audio, record)
    if found.samplerate != rate or found.channels != channels:
        return fail(f"{found.samplerate} Hz x {found.channels} channels != {rate} Hz x {channels}", audio, record)
    if file_sha256(audio) != sha:
        return fail("checksum mismatch", audio, record)
    return Verification(True, "verified", sidecar_path, audio, record)
